"""Bearer-token authentication of the provisioning client.

django-scim2 leaves authentication to the product: its check (SCIMAuthCheckMiddleware, applied
to every SCIM view) only asks whether `request.user` is authenticated. Here a request carrying
`Authorization: Bearer <DJANGO_SCIM_TOKEN>` is the provisioning client; any other is anonymous
and gets 401.
"""
import hmac

from django.conf import settings
from django.contrib.auth.models import AnonymousUser


class Provisioner:
    """The identity provider's client: authenticated, and no account of the product."""

    is_authenticated = True
    is_anonymous = False
    is_active = True
    username = "scim-provisioner"

    def __str__(self):
        return self.username


class BearerTokenMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        scheme, _, token = request.META.get("HTTP_AUTHORIZATION", "").partition(" ")
        expected = settings.SCIM_BEARER_TOKEN
        if expected and scheme.lower() == "bearer" and hmac.compare_digest(token.strip(), expected):
            request.user = Provisioner()
        else:
            request.user = AnonymousUser()
        return self.get_response(request)
