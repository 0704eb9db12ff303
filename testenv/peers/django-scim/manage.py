#!/usr/bin/env python
"""The product's management command: `migrate`, then `runserver --noreload 127.0.0.1:<port>`.

Configured by the environment (see product/settings.py): DJANGO_SCIM_DATA, DJANGO_SCIM_TOKEN,
DJANGO_SCIM_NETLOC.
"""
import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "product.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
