"""The Kubernetes API client of the operator's own calls (Lease, status writes): how it
is configured and what calling it can raise."""

from __future__ import annotations

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

# An answer that is an error (ApiException) or no answer at all (HTTPError).
API_ERRORS = (ApiException, HTTPError)


def load_kubernetes_config() -> client.ApiClient:
    """In-cluster credentials when running in a pod, otherwise KUBECONFIG."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()
