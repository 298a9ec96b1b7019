using System.Security.Cryptography;
using System.Text;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;

namespace Moat.Tests;

/// <summary>Files read and written by the agent from inside the sandbox — on every tier.</summary>
public sealed class FileTests(NodeFixture node) : SandboxTestBase(node), IClassFixture<NodeFixture>
{
    private async Task<byte[]> ReadAsync(string id, string path, string? user = null)
    {
        await using var stream = await Manager.OpenFileAsync(id, Tenant, path, user, CancellationToken.None);
        using var buffer = new MemoryStream();
        await stream.CopyToAsync(buffer);
        return buffer.ToArray();
    }

    private Task<Moat.Protocol.Messages.FileInfo> WriteAsync(string id, string path, byte[] content, string? user = null) =>
        Manager.WriteFileAsync(id, Tenant, path, new MemoryStream(content), user, 0, CancellationToken.None);

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Binary_files_round_trip_exactly(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        var bytes = new byte[256 * 1024 + 17];
        Random.Shared.NextBytes(bytes);
        await WriteAsync(sb.Id, "/home/user/data/blob.bin", bytes);
        Assert.Equal(bytes, await ReadAsync(sb.Id, "/home/user/data/blob.bin"));
        // The command inside sees the same bytes, owned by user.
        // python rather than GNU stat: stat(1) fails under gVisor's release 20221219 (statx EINVAL).
        var ran = await ShAsync(sb.Id, "sha256sum /home/user/data/blob.bin | cut -d' ' -f1; python3 -c \"import os,pwd\nfor p in ('/home/user/data/blob.bin','/home/user/data'): s=os.stat(p); print(pwd.getpwuid(s.st_uid).pw_name, oct(s.st_mode & 0o777)[2:])\"");
        Assert.Equal($"{Convert.ToHexStringLower(SHA256.HashData(bytes))}\nuser 644\nuser 755\n", ran.Stdout);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task A_50_MiB_file_streams_both_ways(IsolationTier tier)
    {
        var sb = await CreateAsync(tier, diskMiB: 512);
        var bytes = new byte[50 << 20];
        new Random(42).NextBytes(bytes);
        await WriteAsync(sb.Id, "/tmp/big.bin", bytes);
        var back = await ReadAsync(sb.Id, "/tmp/big.bin");
        Assert.Equal(bytes.Length, back.Length);
        Assert.Equal(SHA256.HashData(bytes), SHA256.HashData(back));
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Many_small_files_round_trip(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        await Parallel.ForEachAsync(Enumerable.Range(0, 200), new ParallelOptions { MaxDegreeOfParallelism = 16 }, async (i, _) =>
            await WriteAsync(sb.Id, $"/home/user/many/f{i:000}.txt", Encoding.UTF8.GetBytes($"file {i}")));
        var (entries, truncated) = await Manager.ListFilesAsync(sb.Id, Tenant, "/home/user/many", 1, null, CancellationToken.None);
        Assert.False(truncated);
        Assert.Equal(200, entries.Count);
        for (int i = 0; i < 200; i += 37)
            Assert.Equal($"file {i}", Encoding.UTF8.GetString(await ReadAsync(sb.Id, $"/home/user/many/f{i:000}.txt")));
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Dotdot_absolute_and_symlink_paths_resolve_inside_the_sandbox(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        var marker = $"moat-escape-{Guid.NewGuid():N}";
        // Symlinks pointing at the root and at /proc, made by code inside.
        await ShAsync(sb.Id, "ln -s / /tmp/root-link; ln -s /etc /tmp/etc-link; ln -s /proc/self /tmp/proc-link", user: "root");
        await WriteAsync(sb.Id, $"/tmp/../../../../tmp/{marker}", "inside"u8.ToArray(), user: "root");
        await WriteAsync(sb.Id, $"/tmp/root-link/tmp/{marker}-2", "inside"u8.ToArray(), user: "root");
        // Host oracle: nothing appeared in the host's /tmp, and the host's /etc/passwd is not what we read.
        Assert.False(File.Exists($"/tmp/{marker}"));
        Assert.False(File.Exists($"/tmp/{marker}-2"));
        Assert.Equal("insideinside", (await ShAsync(sb.Id, $"cat /tmp/{marker} /tmp/{marker}-2")).Stdout);
        var passwd = Encoding.UTF8.GetString(await ReadAsync(sb.Id, "/tmp/etc-link/passwd"));
        Assert.Contains("user:x:1000:1000", passwd);
        Assert.Equal((await ShAsync(sb.Id, "cat /etc/passwd")).Stdout, passwd);
        // Relative paths are under the user's home.
        await WriteAsync(sb.Id, "notes/rel.txt", "rel"u8.ToArray());
        Assert.Equal("rel", (await ShAsync(sb.Id, "cat /home/user/notes/rel.txt")).Stdout);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Fifos_and_devices_are_refused_without_hanging(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        await ShAsync(sb.Id, "mkfifo /tmp/fifo");
        using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        var fifo = await Assert.ThrowsAsync<AgentOperationException>(() => ReadAsync(sb.Id, "/tmp/fifo"));
        Assert.Equal("not_a_file", fifo.Code);
        var device = await Assert.ThrowsAsync<AgentOperationException>(() => ReadAsync(sb.Id, "/dev/zero", user: "root"));
        Assert.Equal("not_a_file", device.Code);
        var dir = await Assert.ThrowsAsync<AgentOperationException>(() => ReadAsync(sb.Id, "/etc"));
        Assert.Equal("is_a_directory", dir.Code);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task File_permissions_are_the_sandbox_users(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        var denied = await Assert.ThrowsAsync<AgentOperationException>(() => ReadAsync(sb.Id, "/etc/shadow"));
        Assert.Equal("permission_denied", denied.Code);
        Assert.Contains("root:", Encoding.UTF8.GetString(await ReadAsync(sb.Id, "/etc/shadow", user: "root")));
        var write = await Assert.ThrowsAsync<AgentOperationException>(() => WriteAsync(sb.Id, "/etc/forbidden", "x"u8.ToArray()));
        Assert.Equal("permission_denied", write.Code);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task List_stat_mkdir_rename_remove(IsolationTier tier)
    {
        var sb = await CreateAsync(tier);
        await Manager.MakeDirectoryAsync(sb.Id, Tenant, "/home/user/a/b/c", null, CancellationToken.None);
        await WriteAsync(sb.Id, "/home/user/a/b/c/file.txt", "12345"u8.ToArray());
        await ShAsync(sb.Id, "ln -s /home/user/a/b /home/user/a/link");
        var (deep, _) = await Manager.ListFilesAsync(sb.Id, Tenant, "/home/user/a", 3, null, CancellationToken.None);
        Assert.Equal(["/home/user/a/b", "/home/user/a/b/c", "/home/user/a/b/c/file.txt", "/home/user/a/link"], deep.Select(e => e.Path).Order().ToList());
        var (shallow, _) = await Manager.ListFilesAsync(sb.Id, Tenant, "/home/user/a", 1, null, CancellationToken.None);
        Assert.Equal(2, shallow.Count);
        var link = await Manager.StatFileAsync(sb.Id, Tenant, "/home/user/a/link", null, CancellationToken.None);
        Assert.Equal(Moat.Protocol.Messages.FileType.Symlink, link.Type);
        Assert.Equal("/home/user/a/b", link.SymlinkTarget);
        var file = await Manager.StatFileAsync(sb.Id, Tenant, "/home/user/a/b/c/file.txt", null, CancellationToken.None);
        Assert.Equal(5UL, file.Size);
        Assert.Equal("user", file.Owner);
        await Manager.RenameFileAsync(sb.Id, Tenant, "/home/user/a/b/c/file.txt", "/home/user/moved.txt", null, CancellationToken.None);
        Assert.Equal("12345", (await ShAsync(sb.Id, "cat /home/user/moved.txt")).Stdout);
        await Manager.RemoveFileAsync(sb.Id, Tenant, "/home/user/a", null, CancellationToken.None);
        Assert.Equal("gone\n", (await ShAsync(sb.Id, "test -e /home/user/a || echo gone")).Stdout);
        var missing = await Assert.ThrowsAsync<AgentOperationException>(() => Manager.StatFileAsync(sb.Id, Tenant, "/nope", null, CancellationToken.None));
        Assert.Equal("not_found", missing.Code);
    }

    [SkippableTheory, MemberData(nameof(Tiers.All), MemberType = typeof(Tiers))]
    public async Task Writing_beyond_the_disk_quota_fails_and_leaves_the_sandbox_usable(IsolationTier tier)
    {
        var sb = await CreateAsync(tier, diskMiB: 64);
        var chunk = new byte[96 << 20];
        var ex = await Assert.ThrowsAsync<AgentOperationException>(() => WriteAsync(sb.Id, "/tmp/too-big.bin", chunk));
        Assert.Equal("no_space", ex.Code);
        // The failed write left no partial file behind, and the sandbox still works.
        Assert.Equal("", (await ShAsync(sb.Id, "ls -A /tmp | grep -v '^moat' || true")).Stdout);
        Assert.Equal("ok\n", (await ShAsync(sb.Id, "echo ok")).Stdout);
    }
}
