// Shared by the flows. The SDKs are configured only the way a user would point them at Moat:
// E2B_API_KEY, E2B_API_URL and E2B_SANDBOX_URL in the environment (set by the xunit runner).
import assert from 'node:assert/strict';

for (const name of ['E2B_API_KEY', 'E2B_API_URL', 'E2B_SANDBOX_URL']) {
  assert.ok(process.env[name], `${name} must be set (the xunit runner sets it)`);
}

/** Options every sandbox of the flows is created with: short lives, so nothing outlives a failed run. */
export const short = { timeoutMs: 120_000 };

/** Waits until check() is truthy (polling), or fails with the message. */
export async function eventually(check, message, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) assert.fail(message);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Runs fn with a sandbox that is killed afterwards, whatever happens. */
export async function withSandbox(Sandbox, opts, fn) {
  const sandbox = await Sandbox.create({ ...short, ...opts });
  try {
    return await fn(sandbox);
  } finally {
    await sandbox.kill().catch(() => {});
  }
}
