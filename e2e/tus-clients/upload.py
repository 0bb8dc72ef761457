"""Drives one upload with tuspy, the real Python tus client, for the gateway's tests.

    .stack/tools/venv/bin/python e2e/tus-clients/upload.py '<json>'

scripts/stack installs tuspy (pinned in its PY_REQUIREMENTS) into that venv.

<json>: {endpoint, token, file, chunkSize, metadata, url?, stopAt?, cuts?, retryDelays?, checksum?}
stdout: one JSON line, {"ok": true, url, jobId, offset, stopped, resumes} or, exit code 1,
{"ok": false, status, body, url, offset}. Logs go to stderr.
 - url: resume that upload (HEAD, then PATCH from the server's offset); never creates one.
 - stopAt: stop once the server acknowledged an offset >= stopAt, leaving the upload unfinished.
 - cuts: N times, at random offsets spread over what is left to send, the PATCH carrying that
   offset is cut after sending the bytes before it (its connection closed), then the upload
   resumes with a HEAD.
 - resumes: the Upload-Offset of every HEAD made (resume by url, after a cut, on a retry).
 - retryDelays (ms): tuspy's own retries (retries/retry_delay) wait one fixed delay and retry any
   failed PATCH, 4xx included, so this loop retries instead, like tus-js-client: on a connection
   error, 409, 423 or 5xx, waiting each delay in turn, then HEAD for the offset. A PATCH that
   succeeds gives back all the delays. Absent means no retries.
 - checksum: tuspy's upload_checksum (Upload-Checksum: sha1 on every PATCH).
"""

import io
import json
import os
import random
import sys
import time
import traceback

import requests
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError


def log(message):
    print(f"[upload.py] {message}", file=sys.stderr, flush=True)


def crashed(kind, error, tb):
    # Still one result line when the arguments or the file are wrong (the exit code stays 1).
    traceback.print_exception(kind, error, tb)
    result = {"ok": False, "status": None, "body": repr(error), "url": None, "offset": None}
    print(json.dumps(result), flush=True)


sys.excepthook = crashed


class Cut(Exception):
    """Raised from inside the request body: urllib3 then closes the connection mid-PATCH."""


class CuttingBody(io.BytesIO):
    # A file-like body still gets its full Content-Length from requests; reading stops short.
    def __init__(self, data, limit):
        super().__init__(data)
        self.limit = limit

    def read(self, n=-1):
        left = self.limit - self.tell()
        if left <= 0:
            raise Cut()
        return super().read(left if n is None or n < 0 else min(n, left))


args = json.loads(sys.argv[1])
size = os.path.getsize(args["file"])
cut_at = None  # set at the first PATCH, see patch()
last_response = None

# tuspy keeps only the PATCH responses' headers and drops the creation POST's, which is the final
# request of an empty file; it calls requests.post/patch, so wrapping those sees every response,
# and is where a PATCH's body can be swapped for one that cuts the connection.
_post, _patch = requests.post, requests.patch


def post(*a, **kw):
    global last_response
    last_response = _post(*a, **kw)
    return last_response


def patch(url, data=None, **kw):
    global last_response, cut_at
    start = int(kw["headers"]["upload-offset"])
    if cut_at is None:
        # One random offset in each of `cuts` equal slices of the first 90% of what is left to send
        # (a resumed upload starts midway).
        cuts = args.get("cuts") or 0
        left = size - start
        cut_at = [start + 1 + int(left * 0.9 * (i + random.random()) / cuts) for i in range(cuts)]
    if cut_at and start <= cut_at[0] < start + len(data):
        log(f"cut: PATCH from {start} cut at {cut_at[0]}")
        data = CuttingBody(data, max(1, cut_at.pop(0) - start))
    last_response = _patch(url, data=data, **kw)
    return last_response


requests.post, requests.patch = post, patch


def retryable(error):
    status = error.status_code
    return status is None or status in (409, 423) or not 400 <= status < 500


def main():
    client = TusClient(args["endpoint"], headers={"Authorization": f"Bearer {args['token']}"})
    stream = open(args["file"], "rb")
    # A url is set after construction, not passed to it: tuspy's constructor would HEAD at once,
    # outside the retry loop below.
    uploader = client.uploader(
        file_stream=stream,
        chunk_size=args.get("chunkSize") or sys.maxsize,
        metadata=args.get("metadata") or {},
        upload_checksum=bool(args.get("checksum")),
    )
    uploader.url = args.get("url")
    state = {"offset": None, "resumes": []}
    delays = list(args.get("retryDelays") or [])
    need_head = uploader.url is not None
    stop_at = args.get("stopAt")

    def result(**fields):
        return {"url": uploader.url, "offset": state["offset"], **fields}

    try:
        while True:
            try:
                if uploader.url is None:
                    uploader.set_url(uploader.create_url())
                    log(f"upload url {uploader.url}")
                    uploader.offset = state["offset"] = 0
                if need_head:
                    uploader.offset = state["offset"] = uploader.get_offset()
                    state["resumes"].append(uploader.offset)
                    log(f"resuming at {uploader.offset}")
                    need_head = False
                if uploader.offset >= size:
                    break
                if stop_at is not None and uploader.offset >= stop_at:
                    return 0, result(ok=True, jobId=None, stopped=True, resumes=state["resumes"])
                uploader.upload_chunk()
                state["offset"] = uploader.offset
                delays = list(args.get("retryDelays") or [])
            except Cut:
                need_head = True
            except TusCommunicationError as error:
                if not (delays and retryable(error)):
                    raise
                log(f"retrying after {error} (status {error.status_code})")
                time.sleep(delays.pop(0) / 1000)
                need_head = uploader.url is not None
    except TusCommunicationError as error:
        log(f"failed: {error}")
        body = error.response_content
        body = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or error)
        return 1, result(ok=False, status=error.status_code, body=body)
    except Exception as error:  # e.g. a 2xx PATCH response without Upload-Offset: tuspy fails
        log(f"failed: {error!r}")
        return 1, result(ok=False, status=None, body=repr(error))
    job_id = last_response.headers.get("Tunewire-Job-Id") if last_response is not None else None
    return 0, result(ok=True, jobId=job_id, stopped=False, resumes=state["resumes"])


if __name__ == "__main__":
    code, out = main()
    print(json.dumps(out), flush=True)
    sys.exit(code)
