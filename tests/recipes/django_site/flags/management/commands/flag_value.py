"""python manage.py flag_value FLAG [--user KEY]: evaluate a flag once and print the result as JSON."""

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

import featbit_shm


class Command(BaseCommand):
    help = "Evaluate a FeatBit flag for a user and print the result as JSON."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("flag")
        parser.add_argument("--user", default="anonymous")

    def handle(self, *args: Any, **options: Any) -> None:
        # Configured by settings.py. On a host where the site runs, the client
        # maps the site's snapshot at once; on any other it starts a sync
        # process (detached; it exits 30 s after the last client is gone) and
        # waits for its first snapshot, at most featbit_shm.start_wait (15 s).
        client = featbit_shm.get()
        key = options["user"]
        detail = client.variation_detail(options["flag"], {"key": key, "name": key}, None)
        answer = {"flag": options["flag"], "user": key, "value": detail.variation, "kind": detail.kind.value}
        self.stdout.write(json.dumps(answer))
        if detail.kind.value == "ClientNotReady":
            raise CommandError("no flag data: see the featbit_shm warning above")
        # The evaluation event is in shared memory: the sync process sends it
        # after this command has exited.
