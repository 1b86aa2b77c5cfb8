"""schemathesis hooks for lanyard-server's contract test: audio bodies are
sent as the bytes generated (the server must refuse noise, documented)."""

import schemathesis


@schemathesis.serializer("audio/ogg", "audio/wav")
def audio(ctx, value):
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")
