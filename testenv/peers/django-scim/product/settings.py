"""A minimal Django product that provisions its people over SCIM with django-scim2.

Its accounts are django.contrib.auth users (`AbstractUser`) carrying django-scim2's identifiers,
its groups django.contrib.auth Groups (see models.py). The SCIM API is django-scim2's views and
adapters as shipped, under /scim/v2/, behind a bearer token; the one configuration beyond its
README is `externalId` added to the filterable attributes of Users and Groups (filters.py).

Environment:
- DJANGO_SCIM_DATA: the folder of the SQLite database (created by `manage.py migrate`);
- DJANGO_SCIM_TOKEN: the bearer token a provisioning client must send;
- DJANGO_SCIM_NETLOC: host:port for the `location` URLs django-scim2 writes (default
  127.0.0.1:8000);
- DJANGO_SCIM_SHIPPED_FILTERS=1: django-scim2's filters as shipped, without `externalId` (a
  product that did not add it).
"""
import os
from pathlib import Path

DATA = Path(os.environ.get("DJANGO_SCIM_DATA", Path(__file__).resolve().parent.parent))

# A throwaway test server: nothing here protects anything real.
SECRET_KEY = "django-scim test peer, not a secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_scim",
    "product",
]

MIDDLEWARE = [
    "product.auth.BearerTokenMiddleware",
]

ROOT_URLCONF = "product.urls"
WSGI_APPLICATION = None

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATA / "product.sqlite3",
        # The development server answers each request on a thread of its own.
        "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
    }
}

AUTH_USER_MODEL = "product.User"
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
USE_TZ = True
TIME_ZONE = "UTC"

SCIM_BEARER_TOKEN = os.environ.get("DJANGO_SCIM_TOKEN", "")

SCIM_SERVICE_PROVIDER = {
    "NETLOC": os.environ.get("DJANGO_SCIM_NETLOC", "127.0.0.1:8000"),
    "SCHEME": "http",
    "AUTHENTICATION_SCHEMES": [
        {
            "type": "oauthbearertoken",
            "name": "OAuth Bearer Token",
            "description": "A bearer token issued by the product for provisioning",
            "primary": True,
        },
    ],
    "WWW_AUTHENTICATE_HEADER": 'Bearer realm="product"',
    "GROUP_MODEL": "product.models.Group",
}
if os.environ.get("DJANGO_SCIM_SHIPPED_FILTERS") != "1":
    SCIM_SERVICE_PROVIDER["USER_FILTER_PARSER"] = "product.filters.UserFilterQuery"
    SCIM_SERVICE_PROVIDER["GROUP_FILTER_PARSER"] = "product.filters.GroupFilterQuery"

# django-scim2 logs every SCIM request and answer (path, method, body, status) at DEBUG: kept
# in the peer's log, the evidence of what a client sent and what it was told.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"one_line": {"()": "product.logs.OneLine"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "one_line"}},
    "loggers": {
        "django_scim": {"handlers": ["console"], "level": "DEBUG", "propagate": False},
    },
}
