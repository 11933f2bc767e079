"""convscope explorer: a FastAPI app over the result cache (JSON API and pages).

Torch-free by design: the server reads only the cache written by ``precompute``; uploads run the
``convscope`` CLI in a subprocess. ``server.app:create_app`` is the (uvicorn factory) entry point.
"""
