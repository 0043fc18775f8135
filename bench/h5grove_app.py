"""h5grove's FastAPI router under uvicorn, serving a data root as h5grove documents it.

Run as ``python -m bench.h5grove_app --root DIR --port P [--host ADDR]``.
"""

from __future__ import annotations

import argparse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()

    import uvicorn
    from fastapi import FastAPI
    from h5grove.fastapi_utils import router, settings

    settings.base_dir = args.root
    app = FastAPI()
    app.include_router(router)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
