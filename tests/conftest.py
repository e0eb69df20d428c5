import os

from hypothesis import HealthCheck, settings

# `make test` (and so CI) runs the thorough profile; FIELDSYNC_HYPOTHESIS=dev is quicker.
settings.register_profile(
    "ci", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("dev", max_examples=100, deadline=None)
settings.load_profile(os.environ.get("FIELDSYNC_HYPOTHESIS", "ci"))
