"""Certification runs over a dataset: the frozen CertifyJob, the local loop and Ray."""
