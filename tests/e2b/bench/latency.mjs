// Latency of the stock E2B SDK against Moat, and of the same work through Moat's native API, so
// the overhead of the compatibility layer shows. Not a test: run it by hand (docs/benchmarks.md).
//
//   E2B_API_KEY=e2b_... E2B_API_URL=http://127.0.0.1:8080/e2b E2B_SANDBOX_URL=http://127.0.0.1:8080 \
//     node bench/latency.mjs [sandboxes=10] [runs=30]
//
// The server's E2B sandboxes should be on the tier to compare (--Moat:E2b:Isolation=container);
// the native side asks for the container tier explicitly.
import { Sandbox } from 'e2b';

const sandboxes = Number(process.argv[2] ?? 10);
const runs = Number(process.argv[3] ?? 30);
const server = process.env.E2B_SANDBOX_URL;
const key = process.env.E2B_API_KEY;
if (!server || !key || !process.env.E2B_API_URL) throw new Error('set E2B_API_KEY, E2B_API_URL and E2B_SANDBOX_URL');

const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s.length % 2 ? s[(s.length - 1) >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2; };
const p90 = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.ceil(s.length * 0.9) - 1)]; };
const ms = (t0) => Number(process.hrtime.bigint() - t0) / 1e6;
const now = () => process.hrtime.bigint();

// The same command E2B's commands.run sends: bash -l -c.
const command = 'echo hi';

async function native(path, init = {}) {
  const r = await fetch(server + path, { ...init, headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...(init.headers ?? {}) } });
  const text = await r.text();
  if (!r.ok) throw new Error(`${init.method ?? 'GET'} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

let e2b;
let moat;

// Round 0 warms up both sides (module loading, JIT, connection pools) and is not counted.
for (let i = 0; i <= sandboxes; i++) {
  if (i <= 1) {
    e2b = { createToFirst: [], create: [], run: [] };
    moat = { createToFirst: [], create: [], run: [] };
  }
  // E2B SDK: Sandbox.create, then the first commands.run until its first stdout.
  let t0 = now();
  const sbx = await Sandbox.create({ timeoutMs: 120_000 });
  e2b.create.push(ms(t0));
  await new Promise((resolve, reject) => {
    let seen = false;
    sbx.commands.run(command, { onStdout: () => { if (!seen) { seen = true; e2b.createToFirst.push(ms(t0)); resolve(); } } }).catch(reject);
  });
  for (let j = 0; j < runs; j++) {
    const t = now();
    await sbx.commands.run(command);
    e2b.run.push(ms(t));
  }
  await sbx.kill();

  // Native API: create, then a buffered exec of the same argv.
  t0 = now();
  const created = await native('/v1/sandboxes', { method: 'POST', body: JSON.stringify({ template: 'base', isolation: 'container', timeoutSeconds: 120 }) });
  moat.create.push(ms(t0));
  const exec = (id) => native(`/v1/sandboxes/${id}/exec`, { method: 'POST', body: JSON.stringify({ cmd: ['/bin/bash', '-l', '-c', command] }) });
  await exec(created.id);
  moat.createToFirst.push(ms(t0));
  for (let j = 0; j < runs; j++) {
    const t = now();
    await exec(created.id);
    moat.run.push(ms(t));
  }
  await native(`/v1/sandboxes/${created.id}`, { method: 'DELETE' });
}

const row = (name, a, b) => `| ${name} | ${median(a).toFixed(1)} (p90 ${p90(a).toFixed(1)}) | ${median(b).toFixed(1)} (p90 ${p90(b).toFixed(1)}) | ${(median(a) / median(b)).toFixed(2)}x |`;
console.log(`${sandboxes} sandboxes, ${runs} runs each; milliseconds, median (p90)`);
console.log('| | E2B SDK → Moat | native API | ratio |');
console.log('|---|---|---|---|');
console.log(row('create', e2b.create, moat.create));
console.log(row('create → first command output', e2b.createToFirst, moat.createToFirst));
console.log(row('command round trip (`bash -l -c "echo hi"`)', e2b.run, moat.run));
