// Moat's JavaScript kernel: one long-lived Node.js process of a code context, driven by the host.
// Runs inside the sandbox as `node -e <this file>`. Requests arrive on stdin, one JSON object per
// line: {"code": "...", "env": {...}}. Messages to the host go out on stdout, one JSON object per
// line; what user code writes to process.stdout / process.stderr (console.log included) is framed
// as stdout / stderr messages. Declarations persist between cells: every cell runs as a script in
// the same global scope.
'use strict';
const fs = require('fs');
const path = require('path');
const util = require('util');
const vm = require('vm');
const { createRequire } = require('module');

const writeRaw = (text) => {
  let buffer = Buffer.from(text, 'utf8');
  while (buffer.length > 0) {
    try {
      const n = fs.writeSync(1, buffer);
      buffer = buffer.subarray(n);
    } catch (error) {
      if (error.code !== 'EAGAIN') throw error;
    }
  }
};
const send = (message) => writeRaw(JSON.stringify(message) + '\n');

const framed = (kind) => function write(chunk, encoding, callback) {
  if (typeof encoding === 'function') { callback = encoding; encoding = undefined; }
  const text = typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8');
  if (text.length > 0) send({ type: kind, text });
  if (typeof callback === 'function') process.nextTick(callback);
  return true;
};
process.stdout.write = framed('stdout');
process.stderr.write = framed('stderr');

const cwd = process.cwd();
globalThis.require = createRequire(path.join(cwd, '__moat_cell__.js'));
globalThis.module = { exports: {}, require: globalThis.require };
globalThis.exports = globalThis.module.exports;
globalThis.__dirname = cwd;
globalThis.__filename = path.join(cwd, '__moat_cell__.js');

const textOf = (value) => {
  let text = typeof value === 'string' ? value : util.inspect(value, { depth: 4, maxArrayLength: 200, breakLength: 100 });
  return text;
};

const formatsOf = (value) => {
  const data = {};
  if (value !== null && typeof value === 'object') {
    for (const [method, key] of [['_repr_html_', 'html'], ['_repr_markdown_', 'markdown'], ['_repr_svg_', 'svg'], ['_repr_png_', 'png'], ['_repr_latex_', 'latex'], ['_repr_json_', 'json']]) {
      if (typeof value[method] === 'function') {
        try {
          const produced = value[method]();
          if (produced !== undefined && produced !== null) data[key] = Buffer.isBuffer(produced) ? produced.toString('base64') : produced;
        } catch (_) { /* a broken representation is left out */ }
      }
    }
  }
  data.text = textOf(value);
  return data;
};

// The stack as far as the cell goes: the kernel's own frames are cut.
const cellStack = (stack) => {
  const lines = String(stack).split('\n');
  const end = lines.findIndex((line) => /^\s+at .*(sigintHandlersWrap|node:vm|\[eval\]|runCell|processTicksAndRejections)/.test(line));
  return (end < 0 ? lines : lines.slice(0, end)).join('\n');
};

const errorMessage = (error) => {
  if (error instanceof Error || (error && typeof error === 'object' && 'stack' in error)) {
    return { type: 'error', name: String(error.name || 'Error'), value: String(error.message ?? ''), traceback: cellStack(error.stack || `${error.name}: ${error.message}`) };
  }
  return { type: 'error', name: 'Error', value: textOf(error), traceback: `Uncaught ${textOf(error)}` };
};

let count = 0;

// In an async wrapper the value of the cell is what it returns: make a last line that looks like
// an expression the return value.
const returningLast = (code) => {
  const lines = code.replace(/\s+$/, '').split('\n');
  const last = lines[lines.length - 1];
  const statement = /^\s*(const|let|var|if|for|while|do|function|class|return|throw|try|catch|finally|switch|import|export|\}|\/\/|\/\*)/;
  if (lines.length > 1 && last.trim() && !statement.test(last) && !last.trim().endsWith('{')) {
    lines[lines.length - 1] = `return (${last.replace(/;\s*$/, '')});`;
  }
  return lines.join('\n');
};

const runCell = async (code) => {
  const filename = `<cell ${count}>`;
  let script;
  try {
    script = new vm.Script(code, { filename });
  } catch (error) {
    // Top-level await: run the cell as the body of an async function (its declarations stay local).
    if (error instanceof SyntaxError && /\bawait\b/.test(code)) {
      script = new vm.Script(`(async () => {\n${returningLast(code)}\n})()`, { filename, lineOffset: -1 });
    } else {
      throw error;
    }
  }
  let value = script.runInThisContext({ breakOnSigint: true, displayErrors: false });
  if (value && typeof value.then === 'function') value = await value;
  return value;
};

const execute = async (request) => {
  count += 1;
  const env = request.env || {};
  const saved = {};
  for (const [k, v] of Object.entries(env)) { saved[k] = process.env[k]; process.env[k] = String(v); }
  try {
    const value = await runCell(String(request.code ?? ''));
    if (value !== undefined) send({ type: 'result', is_main_result: true, ...formatsOf(value) });
  } catch (error) {
    send(errorMessage(error));
  } finally {
    for (const [k, v] of Object.entries(saved)) {
      if (v === undefined) delete process.env[k]; else process.env[k] = v;
    }
  }
  send({ type: 'number_of_executions', execution_count: count });
  send({ type: 'end_of_execution' });
};

// An interrupt between cells has nothing to stop; during a cell breakOnSigint stops the script.
process.on('SIGINT', () => {});
process.on('uncaughtException', (error) => send({ type: 'stderr', text: `Uncaught ${error && error.stack || error}\n` }));
process.on('unhandledRejection', (error) => send({ type: 'stderr', text: `Unhandled rejection: ${error && error.stack || error}\n` }));

let queue = Promise.resolve();
let pending = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  pending += chunk;
  let newline;
  while ((newline = pending.indexOf('\n')) >= 0) {
    const line = pending.slice(0, newline);
    pending = pending.slice(newline + 1);
    if (line.trim().length === 0) continue;
    let request;
    try { request = JSON.parse(line); } catch (error) { send({ type: 'stderr', text: `moat kernel: bad request: ${error.message}\n` }); continue; }
    queue = queue.then(() => execute(request));
  }
});
process.stdin.on('end', () => queue.then(() => process.exit(0)));
send({ type: 'ready', language: 'javascript', version: process.version });
