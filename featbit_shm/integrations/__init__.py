"""Server integrations that live inside the package (the gunicorn hooks are
the top-level package ``gunicorn_hooks``): the uWSGI mule (:mod:`.uwsgi_mule`)
and the Celery worker signals (:mod:`.celery`)."""
