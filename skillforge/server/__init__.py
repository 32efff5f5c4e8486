"""The OpenAI-compatible HTTP server over the runtime (`skillforge serve`): routes in app.py, the model
worker and its bounded queue in queue.py, one request's splice and decoding in engine.py/decode.py."""
