// Builds the web app: node web/build.mjs --modules <node_modules dir> --out <out dir>
//
// The node_modules dir is an `npm ci` of web/package.json made elsewhere (the gateway's build
// script owns it), so esbuild and every bare import are resolved from there (a plugin sees to
// it): a web/node_modules someone installed by hand can not shadow the locked packages. Writes hashed assets, index.html, a .gz and .br of each text file and
// manifest.json (what the gateway serves, at which path, with which type and encodings).

import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';

const here = path.dirname(fileURLToPath(import.meta.url));

function args(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    if (key !== '--modules' && key !== '--out') throw new Error(`unknown argument ${key}`);
    const value = argv[++i];
    if (!value) throw new Error(`${key} needs a value`);
    out[key.slice(2)] = path.resolve(value);
  }
  if (!out.modules || !out.out) {
    throw new Error('usage: node web/build.mjs --modules <node_modules dir> --out <out dir>');
  }
  return out;
}

const TYPES = {
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.html': 'text/html; charset=utf-8',
};

/** An esbuild-style content hash (8 characters, A-Z and 2-7) for files esbuild does not emit. */
function contentHash(bytes) {
  const digest = createHash('sha256').update(bytes).digest();
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let s = '';
  for (let i = 0; i < 8; i++) s += alphabet[digest[i] % 32];
  return s;
}

/** Writes file.gz and file.br beside `file`; returns the encodings written. */
function precompress(file) {
  const bytes = fs.readFileSync(file);
  fs.writeFileSync(`${file}.gz`, zlib.gzipSync(bytes, { level: 9 }));
  fs.writeFileSync(
    `${file}.br`,
    zlib.brotliCompressSync(bytes, {
      params: {
        [zlib.constants.BROTLI_PARAM_MODE]: zlib.constants.BROTLI_MODE_TEXT,
        [zlib.constants.BROTLI_PARAM_QUALITY]: zlib.constants.BROTLI_MAX_QUALITY,
        [zlib.constants.BROTLI_PARAM_SIZE_HINT]: bytes.length,
      },
    }),
  );
  return ['br', 'gzip'];
}

/** Removes what an earlier build into the same folder wrote (and only that). */
function removePrevious(out) {
  const manifest = path.join(out, 'manifest.json');
  if (!fs.existsSync(manifest)) return;
  for (const entry of JSON.parse(fs.readFileSync(manifest, 'utf8'))) {
    if (path.basename(entry.file) !== entry.file) continue;
    for (const suffix of ['', '.gz', '.br']) fs.rmSync(path.join(out, entry.file + suffix), { force: true });
  }
}

/** Resolves every bare import (`preact`, `tus-js-client`, and theirs) from `modules` only. */
function lockedModules(modules) {
  return {
    name: 'locked-modules',
    setup(build) {
      build.onResolve({ filter: /^[^./]/ }, (args) => {
        if (args.pluginData === 'locked') return undefined;
        return build.resolve(args.path, { kind: args.kind, resolveDir: path.dirname(modules), pluginData: 'locked' });
      });
    },
  };
}

async function main() {
  const { modules, out } = args(process.argv.slice(2));
  const require = createRequire(path.join(modules, 'noop.cjs'));
  const esbuild = require(path.join(modules, 'esbuild'));
  fs.mkdirSync(out, { recursive: true });
  removePrevious(out);

  const result = await esbuild.build({
    absWorkingDir: here,
    entryPoints: { app: path.join(here, 'src', 'app.js') },
    bundle: true,
    minify: true,
    format: 'esm',
    target: 'es2020',
    platform: 'browser',
    entryNames: '[name]-[hash]',
    outdir: out,
    plugins: [lockedModules(modules)],
    metafile: true,
    legalComments: 'none',
    charset: 'utf8',
    define: { 'process.env.NODE_ENV': '"production"' },
    logLevel: 'warning',
  });

  const assets = Object.keys(result.metafile.outputs).map((file) => path.basename(file));
  const js = assets.find((f) => f.endsWith('.js'));
  const css = assets.find((f) => f.endsWith('.css'));
  if (!js || !css) throw new Error(`esbuild wrote ${assets.join(', ')}; expected one .js and one .css`);

  const svg = fs.readFileSync(path.join(here, 'src', 'favicon.svg'));
  const favicon = `favicon-${contentHash(svg)}.svg`;
  fs.writeFileSync(path.join(out, favicon), svg);
  assets.push(favicon);

  const template = fs.readFileSync(path.join(here, 'index.html'), 'utf8');
  const html = template
    .replace('%APP_JS%', `/assets/${js}`)
    .replace('%APP_CSS%', `/assets/${css}`)
    .replace('%FAVICON%', `/assets/${favicon}`);
  if (html.includes('%')) throw new Error('index.html still has a placeholder');
  fs.writeFileSync(path.join(out, 'index.html'), html);

  const entry = (file, urlPath, immutable) => {
    const encodings = precompress(path.join(out, file));
    return { path: urlPath, file, type: TYPES[path.extname(file)], immutable, encodings };
  };
  const manifest = [
    ...assets.map((file) => entry(file, `/assets/${file}`, true)),
    entry('index.html', '/', false),
  ];
  fs.writeFileSync(path.join(out, 'manifest.json'), `${JSON.stringify(manifest, null, 2)}\n`);

  const size = (file) => fs.statSync(path.join(out, file)).size;
  for (const file of [...assets, 'index.html']) {
    console.log(`${file}: ${size(file)} B, gzip ${size(`${file}.gz`)} B, br ${size(`${file}.br`)} B`);
  }
  console.log(`JS gzip size: ${(size(`${js}.gz`) / 1024).toFixed(1)} KiB (${size(`${js}.gz`)} B)`);
}

main().catch((err) => {
  console.error(err?.stack ?? err);
  process.exit(1);
});
