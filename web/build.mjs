// Bundles the operator map into dist/: one script, one stylesheet and Leaflet's
// images, named by content hash, and an index.html that points at them. The hub's
// build script (api/build.rs) runs this with CITYHUB_MAP_OUT set to compile the map
// into the binary; `npm run build` writes dist/ (for http.web_dir). Nothing is
// fetched from a CDN.
import { build } from 'esbuild';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { basename } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const out = process.env.CITYHUB_MAP_OUT
  ? pathToFileURL(`${process.env.CITYHUB_MAP_OUT.replace(/\/$/, '')}/`)
  : new URL('./dist/', import.meta.url);
await rm(out, { recursive: true, force: true });
await mkdir(out, { recursive: true });

const result = await build({
  entryPoints: ['src/main.js', 'src/app.css'],
  bundle: true,
  minify: true,
  sourcemap: true,
  format: 'esm',
  target: ['es2020'],
  outdir: fileURLToPath(out),
  entryNames: '[name]-[hash]',
  assetNames: 'img/[name]-[hash]',
  loader: { '.png': 'file', '.svg': 'file' },
  metafile: true,
  logLevel: 'warning',
});

const outputs = Object.entries(result.metafile.outputs);
const find = (entry) => {
  const hit = outputs.find(([, o]) => o.entryPoint === entry);
  if (!hit) throw new Error(`no output for ${entry}`);
  return basename(hit[0]);
};
const html = (await readFile(new URL('./src/index.html', import.meta.url), 'utf8'))
  .replace('%APP_JS%', `map/${find('src/main.js')}`)
  .replace('%APP_CSS%', `map/${find('src/app.css')}`);
await writeFile(new URL('./index.html', out), html);
const bytes = outputs.filter(([f]) => !f.endsWith('.map')).reduce((n, [, o]) => n + o.bytes, 0);
console.log(`${fileURLToPath(out)}: ${outputs.length} files, ${(bytes / 1024).toFixed(0)} KiB`);
