"""python -m service: serve the newest model under RANKER_MODEL_DIR on RANKER_HOST:RANKER_PORT."""

from __future__ import annotations

import logging
import sys

from pydantic import ValidationError

from service.config import Settings
from service.main import create_app
from service.requestid import install_log_field
from service.server import DrainingServer

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


def load_settings() -> Settings:
    try:
        return Settings()
    except ValidationError as e:
        lines = [
            f"RANKER_{'_'.join(str(x) for x in err['loc']).upper() or '?'}: {err['msg']}"
            for err in e.errors()
        ]
        sys.exit("invalid settings:\n  " + "\n  ".join(lines))


def main() -> None:
    install_log_field()
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    settings = load_settings()
    server = DrainingServer(create_app(settings), settings, log_level="info", access_log=False)
    server.run()
    sys.exit(0 if server.started else 1)


if __name__ == "__main__":
    main()
