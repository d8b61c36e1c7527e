"""The webhook the server sends, in the OpenAPI document (3.1 ``webhooks``), so receivers can be
written, or generated, from the same document as the API's clients."""

from __future__ import annotations

from typing import Annotated

from fastapi import FastAPI, Header

from app.schemas import JobEndedMessage

DESCRIPTION = """
Sent to a job's `webhook_url` (a field of **POST /jobs/optimize**, **/jobs/stylize-image**,
**/jobs/stylize-video** and **/styles**) once the job ends: finished, failed or canceled. A Standard
Webhooks message: verify `webhook-signature` (HMAC-SHA256 over
`<webhook-id>.<webhook-timestamp>.<body>` with the server's `whsec_` key) with any Standard Webhooks
library. Answer with any 2xx; anything else, a timeout or no connection is retried with backoff,
then given up (the job's `webhook.state` says which). Delivery is at least once: drop repeats by
`webhook-id`.
"""


def document_webhooks(app: FastAPI) -> None:
    @app.webhooks.post("job-ended", summary="A job has ended", description=DESCRIPTION)
    def job_ended(
        body: JobEndedMessage,
        webhook_id: Annotated[str, Header(description="The job's id; the same on every retry.")],
        webhook_timestamp: Annotated[str, Header(description="Unix seconds when this attempt was signed.")],
        webhook_signature: Annotated[
            str | None, Header(description="`v1,<base64 HMAC-SHA256>` when the server has a secret.")
        ] = None,
    ) -> None:
        """Documentation only: the dispatcher (app/webhook_dispatcher.py) sends it."""
