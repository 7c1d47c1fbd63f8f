"""The smoothed classifier as a service: certificates per request, batched across clients.

The service runs the offline method objects (dsmooth.certify.methods): `certification`
asks the server's method for each image's resumable state machine
(dsmooth.certify.resumable), which asks for noise samples and receives class counts;
`scheduler` fills one base-classifier batch with the samples of every image in flight;
`policy` lets a request tighten the parameters the method allows; `app` and `server` put
it behind HTTP (docs/service.md).
"""
