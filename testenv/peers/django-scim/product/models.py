"""The product's accounts and groups, as django-scim2 wants them.

django-scim2's adapters read and write its identifiers (`scim_id`, `scim_external_id`,
`scim_username`, `scim_display_name`), which django.contrib.auth's models lack; a product adds
them with django-scim2's abstract mixins:
- a User is django.contrib.auth's `AbstractUser` with `AbstractSCIMUserMixin`;
- a Group is a django.contrib.auth `Group` (multi-table inheritance: the auth Group row with its
  name, permissions and `user_set`) with `AbstractSCIMGroupMixin`, so SCIM membership is
  django.contrib.auth group membership.
"""
from django.contrib.auth import models as auth
from django_scim.models import AbstractSCIMGroupMixin, AbstractSCIMUserMixin


class Group(AbstractSCIMGroupMixin, auth.Group):
    pass


class User(AbstractSCIMUserMixin, auth.AbstractUser):
    @property
    def scim_groups(self):
        """The SCIM Groups this person is a member of (their django.contrib.auth groups)."""
        return Group.objects.filter(group_ptr__in=self.groups.all())
