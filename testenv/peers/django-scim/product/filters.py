"""django-scim2's filter parsers, with `externalId` added.

As shipped, its User filters know userName, name.givenName/familyName and active, and its Group
filters nothing: a filter on any other attribute matches no resource at all.
"""
from django_scim import filters


class UserFilterQuery(filters.UserFilterQuery):
    attr_map = {
        **filters.UserFilterQuery.attr_map,
        ("externalId", None, None): "scim_external_id",
    }


class GroupFilterQuery(filters.GroupFilterQuery):
    attr_map = {
        **filters.GroupFilterQuery.attr_map,
        ("externalId", None, None): "scim_external_id",
    }
