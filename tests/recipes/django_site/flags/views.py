"""GET /?user=KEY -> the flag for that user; GET /health -> is this process serving fresh flags."""

import os

from django.http import HttpRequest, JsonResponse

import featbit_shm


def index(request: HttpRequest) -> JsonResponse:
    user = request.GET.get("user", "anonymous")
    # This process's client, configured by settings.py: built on first use
    # (under gunicorn, by the hooks in post_fork). A read of shared memory,
    # about a microsecond; it records one evaluation event.
    client = featbit_shm.get()
    detail = client.variation_detail("checkout-theme", {"key": user, "name": user}, "classic")
    return JsonResponse(
        {
            "pid": os.getpid(),
            "user": user,
            "theme": detail.variation,
            "kind": detail.kind.value,
            "generation": client.generation,
        }
    )


def health(request: HttpRequest) -> JsonResponse:
    state = featbit_shm.get().health()
    return JsonResponse(state.to_json_dict(), status=200 if state else 503)
