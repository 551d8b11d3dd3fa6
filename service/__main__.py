"""python -m service: serve the newest model under RANKER_MODEL_DIR on RANKER_HOST:RANKER_PORT."""

from __future__ import annotations

import logging
import sys

import uvicorn
from pydantic import ValidationError

from service.config import Settings
from service.main import create_app


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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = load_settings()
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        workers=1,
        log_level="info",
        access_log=False,
    )


if __name__ == "__main__":
    main()
