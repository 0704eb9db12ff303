import logging


class OneLine(logging.Formatter):
    """django-scim2's request log on one line a record: `scim PATH /scim/v2/Users | METHOD POST | …`."""

    def format(self, record):
        parts = super().format(record).split("\n")
        pairs = [f"{k} {v}" for k, v in zip(parts[::2], parts[1::2])]
        return "scim " + " | ".join(pairs)
