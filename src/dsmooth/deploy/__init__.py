"""dsmooth outside dsmooth: model export, the model server, and the certified service with
its client."""
