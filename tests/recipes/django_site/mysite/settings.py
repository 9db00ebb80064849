"""Settings of a minimal Django site that evaluates FeatBit flags with featbit-shm."""

import os

import featbit_shm
from featbit_shm import Config

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-only-for-this-example")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["flags"]  # the app with the views and the flag_value command
MIDDLEWARE = []
ROOT_URLCONF = "mysite.urls"
WSGI_APPLICATION = "mysite.wsgi.application"
DATABASES = {}  # this example needs no database
USE_TZ = True

# featbit-shm: one Config for every process that loads these settings -- the
# gunicorn master (--preload) and its workers, runserver, management commands.
# Nothing is connected here: each process builds its client on its first
# featbit_shm.get(). Read the secret from wherever your settings read secrets.
featbit_shm.set_config(
    Config(
        os.environ["MYSITE_FEATBIT_ENV_SECRET"],
        os.environ["MYSITE_FEATBIT_EVENT_URL"],
        os.environ["MYSITE_FEATBIT_STREAMING_URL"],
        namespace=os.environ.get("MYSITE_FEATBIT_NAMESPACE", "default"),
    )
)
