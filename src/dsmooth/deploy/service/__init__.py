"""The smoothed classifier as a service: certificates per request, batched across clients.

`certification` holds CERTIFY (Clopper-Pearson and sequential) as resumable state
machines that ask for noise samples and receive class counts; `scheduler` fills one
base-classifier batch with the samples of every image in flight; `policy` decides which
per-request parameters may tighten the server's guarantee; `app` and `server` put it
behind HTTP (docs/service.md).
"""
