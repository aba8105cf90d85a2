"""``python -m autoquant.serve``: print the OpenAPI spec of the API (``docs/remote-api.json``)."""

import json

from autoquant.serve._server import api_spec

print(json.dumps(api_spec(), indent=2))
