// Files over envd: /files upload and download, filesystem.Filesystem's Stat, ListDir, MakeDir,
// Move, Remove, and WatchDir.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox, FilesystemEventType, NotFoundError } from 'e2b';
import { withSandbox, eventually } from './helpers.mjs';

test('write, read, list, exists, getInfo, rename, remove, makeDir', async () => {
  await withSandbox(Sandbox, {}, async (sbx) => {
    const written = await sbx.files.write('/home/user/notes/hello.txt', 'hello, moat\n');
    assert.equal(written.path, '/home/user/notes/hello.txt');
    assert.equal(written.name, 'hello.txt');
    assert.equal(await sbx.files.read('/home/user/notes/hello.txt'), 'hello, moat\n');
    // Relative paths are the user's home, binary content survives.
    const bytes = new Uint8Array([0, 1, 2, 250, 255]);
    await sbx.files.write('data.bin', bytes);
    assert.deepEqual(await sbx.files.read('/home/user/data.bin', { format: 'bytes' }), bytes);
    // Several files in one upload.
    await sbx.files.write([{ path: '/tmp/a.txt', data: 'A' }, { path: '/tmp/b.txt', data: 'B' }]);
    assert.equal(await sbx.files.read('/tmp/b.txt'), 'B');

    const entries = await sbx.files.list('/home/user/notes');
    assert.deepEqual(entries.map((e) => [e.name, e.type]), [['hello.txt', 'file']]);
    assert.equal(entries[0].size, 12);

    assert.equal(await sbx.files.exists('/home/user/notes/hello.txt'), true);
    assert.equal(await sbx.files.exists('/home/user/notes/nope.txt'), false);

    const info = await sbx.files.getInfo('/home/user/notes/hello.txt');
    assert.equal(info.type, 'file');
    assert.equal(info.size, 12);
    assert.equal(info.owner, 'user');
    assert.match(info.permissions, /^-rw/);
    assert.ok(info.modifiedTime instanceof Date && Math.abs(info.modifiedTime.getTime() - Date.now()) < 120_000);
    const dirInfo = await sbx.files.getInfo('/home/user/notes');
    assert.equal(dirInfo.type, 'dir');

    assert.equal(await sbx.files.makeDir('/home/user/deep/er/dir'), true);
    assert.equal(await sbx.files.makeDir('/home/user/deep/er/dir'), false, 'an existing directory is not created again');

    const moved = await sbx.files.rename('/home/user/notes/hello.txt', '/home/user/deep/hello.txt');
    assert.equal(moved.path, '/home/user/deep/hello.txt');
    assert.equal(await sbx.files.exists('/home/user/notes/hello.txt'), false);

    const nested = await sbx.files.list('/home/user/deep', { depth: 3 });
    assert.deepEqual(nested.map((e) => e.path).sort(), ['/home/user/deep/er', '/home/user/deep/er/dir', '/home/user/deep/hello.txt']);

    await sbx.files.remove('/home/user/deep');
    assert.equal(await sbx.files.exists('/home/user/deep'), false);
    await sbx.files.remove('/home/user/deep');
    await assert.rejects(() => sbx.files.read('/home/user/deep/hello.txt'), NotFoundError);
  });
});

test('watchDir reports files created, written and removed', async () => {
  await withSandbox(Sandbox, {}, async (sbx) => {
    await sbx.files.makeDir('/home/user/watched');
    const events = [];
    const handle = await sbx.files.watchDir('/home/user/watched', (e) => events.push(e), { timeoutMs: 30_000 });
    try {
      await sbx.files.write('/home/user/watched/new.txt', 'first');
      await eventually(() => events.some((e) => e.name === 'new.txt' && e.type === FilesystemEventType.CREATE), `a create event for new.txt: ${JSON.stringify(events)}`);
      await sbx.commands.run('echo more >> /home/user/watched/new.txt');
      await eventually(() => events.some((e) => e.name === 'new.txt' && e.type === FilesystemEventType.WRITE), `a write event for new.txt: ${JSON.stringify(events)}`);
      await sbx.files.remove('/home/user/watched/new.txt');
      await eventually(() => events.some((e) => e.name === 'new.txt' && e.type === FilesystemEventType.REMOVE), `a remove event for new.txt: ${JSON.stringify(events)}`);
    } finally {
      await handle.stop();
    }
    await assert.rejects(() => sbx.files.watchDir('/home/user/not-there', () => {}), NotFoundError);
  });
});
