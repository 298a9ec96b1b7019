using System.Security.Cryptography;
using Moat.Client.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Moat.Client.Tests.EndToEnd;

/// <summary>Against a real server: files written, read, listed, moved and removed inside a sandbox.</summary>
[Collection(ServerCollection.Name)]
public sealed class FileTests(ServerFixture server, ITestOutputHelper output) : EndToEndTest(server, output)
{
    [SkippableFact]
    public async Task Text_round_trips_and_the_sandbox_sees_it()
    {
        var sandbox = await CreateAsync();

        var written = await sandbox.Files.WriteAsync("/home/user/notes/a.txt", "héllo\n", Timeout);

        Assert.Equal("a.txt", written.Name);
        Assert.Equal(7, written.Size);
        Assert.Equal("héllo\n", await sandbox.Files.ReadTextAsync("/home/user/notes/a.txt", Timeout));
        Assert.Equal("héllo\n", (await sandbox.Commands.RunAsync("cat /home/user/notes/a.txt", Timeout)).Stdout);
        Assert.Equal("user\n", (await sandbox.Commands.RunAsync("stat -c %U /home/user/notes/a.txt", Timeout)).Stdout);
    }

    [SkippableFact]
    public async Task Five_MiB_of_binary_round_trips_through_streams()
    {
        var sandbox = await CreateAsync();
        var data = RandomNumberGenerator.GetBytes(5 << 20);
        using var upload = new MemoryStream(data);

        var written = await sandbox.Files.WriteAsync("/tmp/blob.bin", upload, Timeout);

        Assert.Equal(data.Length, written.Size);
        Assert.Equal(data, await sandbox.Files.ReadBytesAsync("/tmp/blob.bin", Timeout));
        await using (var download = await sandbox.Files.OpenReadAsync("/tmp/blob.bin", Timeout))
        {
            using var sha = SHA256.Create();
            var hash = await sha.ComputeHashAsync(download, Timeout);
            Assert.Equal(SHA256.HashData(data), hash);
        }
        var inside = (await sandbox.Commands.RunAsync("sha256sum /tmp/blob.bin | cut -d' ' -f1", Timeout)).Stdout.Trim();
        Assert.Equal(Convert.ToHexStringLower(SHA256.HashData(data)), inside);
    }

    [SkippableFact]
    public async Task Directories_list_with_depth_and_entries_describe_themselves()
    {
        var sandbox = await CreateAsync();
        await sandbox.Files.MakeDirAsync("/home/user/proj/src", Timeout);
        await sandbox.Files.WriteAsync("/home/user/proj/src/main.py", "print(1)\n", Timeout);
        await sandbox.Files.WriteAsync("/home/user/proj/run.sh", "#!/bin/sh\n"u8.ToArray(), UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute, Timeout);

        var top = await sandbox.Files.ListAsync("/home/user/proj", Timeout);
        var deep = await sandbox.Files.ListAsync("/home/user/proj", depth: 2, Timeout);
        var script = await sandbox.Files.StatAsync("/home/user/proj/run.sh", Timeout);

        Assert.Equal(["run.sh", "src"], top.Select(e => e.Name).Order());
        Assert.Equal("dir", top.Single(e => e.Name == "src").Type);
        Assert.Contains(deep, e => e.Path == "/home/user/proj/src/main.py" && e.Type == "file" && e.Size == 9);
        Assert.Equal("0700", script.Mode);
        Assert.Equal("file", script.Type);
    }

    [SkippableFact]
    public async Task Rename_exists_and_remove()
    {
        var sandbox = await CreateAsync();
        await sandbox.Files.WriteAsync("/tmp/old/name.txt", "x", Timeout);

        await sandbox.Files.RenameAsync("/tmp/old/name.txt", "/tmp/new.txt", Timeout);

        Assert.False(await sandbox.Files.ExistsAsync("/tmp/old/name.txt", Timeout));
        Assert.True(await sandbox.Files.ExistsAsync("/tmp/new.txt", Timeout));
        await sandbox.Files.RemoveAsync("/tmp/old", Timeout);
        Assert.False(await sandbox.Files.ExistsAsync("/tmp/old", Timeout));
        var missing = await Assert.ThrowsAsync<MoatNotFoundException>(() => sandbox.Files.ReadBytesAsync("/tmp/old/name.txt", Timeout));
        Assert.Equal("not_found", missing.Code);
    }

    [SkippableFact]
    public async Task Permissions_are_those_of_the_acting_user()
    {
        var sandbox = await CreateAsync();

        var denied = await Assert.ThrowsAsync<MoatPermissionDeniedException>(() => sandbox.Files.WriteAsync("/etc/moat-test", "x", Timeout));
        await sandbox.Files.AsUser("root").WriteAsync("/etc/moat-test", "x", Timeout);

        Assert.Equal("permission_denied", denied.Code);
        Assert.Equal("root\n", (await sandbox.Commands.RunAsync("stat -c %U /etc/moat-test", Timeout)).Stdout);
    }
}
