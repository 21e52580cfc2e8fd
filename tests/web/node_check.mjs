// Runs segkit.mjs (the page's pure functions) under Node for tests/web/test_web_geometry.py.
// usage: node node_check.mjs <path of segkit.mjs> <job.json>; writes the job's outputs beside its inputs.
import { readFileSync, writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';

const [modulePath, jobPath] = process.argv.slice(2);
const sk = await import(pathToFileURL(modulePath).href);
const job = JSON.parse(readFileSync(jobPath, 'utf8'));
const results = [];
for (const t of job.tasks) {
  try {
    if (t.kind === 'prepare') {
      const rgb = new Uint8Array(readFileSync(t.input));
      const { data, valid } = sk.prepareInput(rgb, t.height, t.width, t.meta, 3);
      writeFileSync(t.output, data);
      results.push({ valid });
    } else if (t.kind === 'mask') {
      const mask = new Uint8Array(readFileSync(t.input));
      writeFileSync(t.output, sk.maskToImage(mask, t.W, t.valid, t.height, t.width));
      results.push({});
    } else if (t.kind === 'fit') {
      results.push({ fit: t.sizes.map(([h, w, th, tw]) => sk.fitSize(h, w, th, tw)) });
    } else if (t.kind === 'metadata') {
      results.push({ meta: sk.readSegkitMetadata(readFileSync(t.input), t.name) });
    }
  } catch (err) {
    results.push({ error: err.message, name: err.name });
  }
}
process.stdout.write(JSON.stringify(results));
