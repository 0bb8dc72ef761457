// Drives one upload with tus-js-client, the real JavaScript tus client, for the gateway's tests.
//
//   TUS_JS_MODULES=.stack/tools/tus-clients/node_modules node e2e/tus-clients/upload.mjs '<json>'
//
// scripts/stack installs tus-js-client (pinned by package-lock.json here) into
// .stack/tools/tus-clients; without TUS_JS_MODULES that folder is used (under $TUNEWIRE_STACK_DIR
// when set). ESM ignores NODE_PATH, hence the explicit path.
//
// <json>: {endpoint, token, file, chunkSize, metadata, url?, stopAt?, cuts?, retryDelays?}
// (checksum is accepted and ignored: tus-js-client has no checksum extension).
// stdout: one JSON line, {ok: true, url, jobId, offset, stopped, resumes, cuts} or, exit code 1,
// {ok: false, status, body, url, offset}. Logs go to stderr.
//  - url: resume that upload (HEAD, then PATCH from the server's offset); never creates one.
//  - stopAt: stop once the server acknowledged an offset >= stopAt, leaving the upload unfinished.
//  - cuts: N times, at random offsets spread over what is left to send, abort() the PATCH in flight
//    (tus-js-client destroys its socket), then start() again, which resumes with a HEAD. A cut
//    lands 64 KiB (one read of the file) into the first PATCH to pass its offset, so chunkSize
//    must be over 64 KiB.
//  - resumes: the Upload-Offset of every HEAD the client made (resume by url, after a cut, on a
//    retry).
//  - retryDelays: tus-js-client's option; absent means no retries (its own default would be
//    [0, 1000, 3000, 5000]), so that an error shows at once.
import { statSync, createReadStream } from 'node:fs'
import { createRequire } from 'node:module'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

// Anything a library prints must not reach stdout, which carries only the result line.
console.log = console.error
const log = (...args) => console.error('[upload.mjs]', ...args)
let url = null
let offset = null // the last offset the server acknowledged
process.on('uncaughtException', (err) => {
  log(err.stack)
  finish({ ok: false, status: null, body: String(err), url, offset }, 1)
})

const here = dirname(fileURLToPath(import.meta.url))
const stack = process.env.TUNEWIRE_STACK_DIR || resolve(here, '../../.stack')
const modules = process.env.TUS_JS_MODULES || join(stack, 'tools/tus-clients/node_modules')
// The package is CommonJS with no "exports": require it by its folder.
const tus = createRequire(import.meta.url)(join(resolve(modules), 'tus-js-client'))

const args = JSON.parse(process.argv[2])
const size = statSync(args.file).size

url = args.url ?? null
let stopped = false
const resumes = []
let cutsMade = 0 // PATCHes really cut while in flight

// Cut points, set at the first PATCH: one random offset in each of `cuts` equal slices of the
// first 90% of what is left to send (a resumed upload starts midway).
let cutAt = null
const spreadCuts = (from) => Array.from({ length: args.cuts ?? 0 },
  (_, i) => from + 1 + Math.floor((size - from) * 0.9 * (i + Math.random()) / args.cuts))
let inflight = null // the PATCH being sent: {req, start}

function finish(result, code) {
  process.stdout.write(JSON.stringify(result) + '\n', () => process.exit(code))
}

// Progress is reported as a piece of the chunk enters the request, before it is written: cutting
// then would close the connection before the PATCH reached the server. One turn of the event loop
// later, the piece is on the wire; if the PATCH has finished by then, the next one is cut instead.
let cutting = false
function cut() {
  const patch = inflight
  cutting = true
  setImmediate(() => {
    cutting = false
    if (inflight !== patch) return
    log(`cut: aborting the PATCH from ${patch.start} (target ${cutAt[0]})`)
    cutAt.shift()
    cutsMade += 1
    inflight = null
    abortAndResume(patch.req.getUnderlyingObject())
  })
}

function abortAndResume(raw) {
  // start() again only once the aborted request is gone: an error it emits after start() cleared
  // the aborted flag would count as the upload's failure.
  let again = false
  const restart = () => { if (!again) { again = true; setImmediate(() => upload.start()) } }
  raw.once('close', restart)
  setTimeout(restart, 2000)
  upload.abort()
}

// fs.ReadStream with a path: tus-js-client's FileSource opens a new stream per chunk by path,
// so memory stays bounded by chunkSize whatever the file size.
const upload = new tus.Upload(createReadStream(args.file), {
  endpoint: url ? null : args.endpoint,
  uploadUrl: url,
  chunkSize: args.chunkSize ?? Infinity,
  metadata: args.metadata ?? {},
  headers: { Authorization: `Bearer ${args.token}` },
  retryDelays: args.retryDelays ?? null,
  storeFingerprintForResuming: false,
  onUploadUrlAvailable() {
    if (upload.url !== url) log(`upload url ${upload.url}`)
    url = upload.url
  },
  onBeforeRequest(req) {
    if (req.getMethod() !== 'PATCH') return
    inflight = { req, start: Number(req.getHeader('Upload-Offset')) }
    cutAt ??= spreadCuts(inflight.start)
  },
  onAfterResponse(req, res) {
    inflight = null
    const status = res.getStatus()
    let acknowledged = Number.parseInt(res.getHeader('Upload-Offset'), 10)
    // A creation response need not carry Upload-Offset: a new upload is at 0.
    if (req.getMethod() === 'POST' && Number.isNaN(acknowledged)) acknowledged = 0
    if (status < 200 || status > 299 || Number.isNaN(acknowledged)) return
    // Known here before tus-js-client reports it, for a stop right after creation (stopAt 0).
    if (req.getMethod() === 'POST') url = new URL(res.getHeader('Location'), args.endpoint).href
    offset = acknowledged
    if (req.getMethod() === 'HEAD') {
      log(`resuming at ${offset}`)
      resumes.push(offset)
    }
    if (args.stopAt != null && offset >= args.stopAt && offset < size && !stopped) {
      // abort() here keeps tus-js-client from sending the next PATCH.
      stopped = true
      upload.abort()
      finish({ ok: true, url, jobId: null, offset, stopped, resumes, cuts: cutsMade }, 0)
    }
  },
  onProgress(sent) {
    if (inflight && !cutting && cutAt.length && sent > inflight.start && sent >= cutAt[0]) cut()
  },
  onSuccess({ lastResponse }) {
    const jobId = lastResponse?.getHeader('Tunewire-Job-Id') ?? null
    finish({ ok: true, url, jobId, offset: offset ?? size, stopped, resumes, cuts: cutsMade }, 0)
  },
  onError(err) {
    log(err.message)
    const res = err.originalResponse
    finish({
      ok: false,
      status: res ? res.getStatus() : null,
      body: res ? res.getBody() : err.message,
      url: upload.url ?? url,
      offset,
    }, 1)
  },
})
upload.start()
