using System.Diagnostics;
using System.Security.Cryptography;
using Moat.Agent.Tests.Infrastructure;
using Moat.Protocol;
using Moat.Protocol.Messages;
using FileInfo = Moat.Protocol.Messages.FileInfo;

namespace Moat.Agent.Tests;

public sealed class FileTests
{
    private static async Task<StreamResult> WriteAsync(AgentClient client, string path, byte[] data, bool createParents = false, bool append = false, uint mode = 0, string user = "")
    {
        var stream = await client.StartAsync(new Request { FileWrite = new FileWriteRequest { Path = path, CreateParents = createParents, Append = append, Mode = mode, User = user, ExpectedSize = data.Length } });
        await client.SendDataAsync(stream, FrameType.FileData, data, final: true);
        return await stream.CollectAsync();
    }

    private static Task<StreamResult> ReadAsync(AgentClient client, string path, ulong offset = 0, ulong length = 0)
        => client.RequestAsync(new Request { FileRead = new FileReadRequest { Path = path, Offset = offset, Length = length } });

    private static async Task<(AgentProcess Agent, AgentClient Client, string Dir)> StartAsync()
    {
        var agent = await AgentProcess.StartAsync();
        var client = await agent.ConnectAsync();
        var dir = Path.Combine(agent.Dir, "files");
        Directory.CreateDirectory(dir);
        return (agent, client, dir);
    }

    [Fact]
    public async Task Binary_content_round_trips()
    {
        var (agent, client, dir) = await StartAsync();
        await using var _ = agent;
        await using var __ = client;
        var data = new byte[300_000];
        new Random(1).NextBytes(data);
        for (int i = 0; i < 256; i++)
            data[i] = (byte)i;
        string path = Path.Combine(dir, "blob.bin");
        var written = await WriteAsync(client, path, data);
        Assert.Equal((ulong)data.Length, written.Final.FileInfo.Size);
        Assert.Equal(FileType.File, written.Final.FileInfo.Type);
        Assert.Equal(data, await File.ReadAllBytesAsync(path));
        var read = await ReadAsync(client, path);
        Assert.Equal((ulong)data.Length, read.Responses[0].FileInfo.Size);
        Assert.Equal(data, read.FileBytes);
        Assert.Equal(1, read.FileDataFinals);
        Assert.NotNull(read.Final.Ok);
        Assert.Null(client.Violation);
    }

    [Fact]
    public async Task Fifty_megabytes_round_trip()
    {
        var (agent, client, dir) = await StartAsync();
        await using var _ = agent;
        await using var __ = client;
        var data = RandomNumberGenerator.GetBytes(50 << 20);
        string path = Path.Combine(dir, "big.bin");
        var sw = Stopwatch.StartNew();
        var written = await WriteAsync(client, path, data);
        Assert.Equal((ulong)data.Length, written.Final.FileInfo.Size);
        var read = await ReadAsync(client, path);
        Assert.Equal(SHA256.HashData(data), SHA256.HashData(read.FileBytes));
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(60));
        Assert.Null(client.Violation);
    }

    [Fact]
    public async Task Many_small_files_round_trip_concurrently()
    {
        var (agent, client, dir) = await StartAsync();
        await using var _ = agent;
        await using var __ = client;
        var writes = Enumerable.Range(0, 200).Select(i => WriteAsync(client, Path.Combine(dir, "small", $"f{i}.txt"), System.Text.Encoding.UTF8.GetBytes($"file {i}\n"), createParents: true));
        foreach (var w in await Task.WhenAll(writes))
            Assert.NotNull(w.Final.FileInfo);
        var reads = Enumerable.Range(0, 200).Select(i => ReadAsync(client, Path.Combine(dir, "small", $"f{i}.txt")));
        var results = await Task.WhenAll(reads);
        for (int i = 0; i < 200; i++)
            Assert.Equal($"file {i}\n", System.Text.Encoding.UTF8.GetString(results[i].FileBytes));
        Assert.Empty(Directory.GetFiles(Path.Combine(dir, "small"), ".*.tmp"));
    }

    [Fact]
    public async Task Read_honours_offset_and_length()
    {
        var (agent, client, dir) = await StartAsync();
        await using var _ = agent;
        await using var __ = client;
        string path = Path.Combine(dir, "digits");
        await File.WriteAllTextAsync(path, "0123456789");
        Assert.Equal("3456", System.Text.Encoding.UTF8.GetString((await ReadAsync(client, path, 3, 4)).FileBytes));
        Assert.Equal("789", System.Text.Encoding.UTF8.GetString((await ReadAsync(client, path, 7)).FileBytes));
        Assert.Equal("", System.Text.Encoding.UTF8.GetString((await ReadAsync(client, path, 100)).FileBytes));
    }

    [Fact]
    public async Task Reading_a_fifo_answers_not_a_file_at_once()
    {
        var (agent, client, dir) = await StartAsync();
        await using var _ = agent;
        await using var __ = client;
        string fifo = Path.Combine(dir, "pipe");
        Assert.Equal(0, Posix.MkFifo(fifo, 0x1B6));
        var sw = Stopwatch.StartNew();
        var r = await ReadAsync(client, fifo);
        Assert.Equal("not_a_file", r.Error!.Code);
        Assert.True(sw.ElapsedMilliseconds < 2000);
        Assert.Equal("not_a_file", (await ReadAsync(client, "/dev/zero")).Error!.Code);
        Assert.Equal("is_a_directory", (await ReadAsync(client, dir)).Error!.Code);
        Assert.Equal("not_found", (await ReadAsync(client, Path.Combine(dir, "missing"))).Error!.Code);
    }

    [Fact]
    public async Task Write_replaces_atomically_appends_and_creates_parents()
    {
        var (agent, client, dir) = await StartAsync();
        await using var _ = agent;
        await using var __ = client;
        string path = Path.Combine(dir, "a", "b", "c.txt");
        var noParents = await WriteAsync(client, path, "x"u8.ToArray());
        Assert.Equal("not_found", noParents.Error!.Code);
        Assert.NotNull((await WriteAsync(client, path, "first\n"u8.ToArray(), createParents: true)).Final.FileInfo);
        Assert.NotNull((await WriteAsync(client, path, "second\n"u8.ToArray(), append: true)).Final.FileInfo);
        Assert.Equal("first\nsecond\n", await File.ReadAllTextAsync(path));
        var replaced = await WriteAsync(client, path, "third\n"u8.ToArray(), mode: 0x180 /* 0600 */);
        Assert.Equal(0x180u, replaced.Final.FileInfo.Mode & 0xFFF);
        Assert.Equal("third\n", await File.ReadAllTextAsync(path));
        Assert.Equal("is_a_directory", (await WriteAsync(client, dir, "x"u8.ToArray())).Error!.Code);
        Assert.Empty(Directory.GetFiles(Path.GetDirectoryName(path)!, ".*"));
    }

    [Fact]
    public async Task A_full_disk_answers_no_space_and_leaves_no_temporary_file()
    {
        // A 1 MiB tmpfs in a private mount namespace of the agent (invisible to the host).
        string dir = Path.Combine(Path.GetTempPath(), "moat-agent-enospc-" + Guid.NewGuid().ToString("N")[..12]);
        string small = Path.Combine(dir, "small");
        Directory.CreateDirectory(small);
        string sock = Path.Combine(dir, "agent.sock");
        string script = $"mount -t tmpfs -o size=1m tmpfs {small} && exec {AgentBinary.Loader} --library-path {Path.Combine(AgentBinary.Directory, "lib")} {AgentBinary.Agent} --listen unix:{sock} --exit-on-stdin-eof";
        await using var agent = await AgentProcess.StartCommandAsync("unshare", ["--mount", "--propagation", "private", "/bin/sh", "-c", script], dir, sock);
        await using var client = await agent.ConnectAsync();
        string target = Path.Combine(small, "big.bin");
        var unknownSize = await client.StartAsync(new Request { FileWrite = new FileWriteRequest { Path = target, ExpectedSize = -1 } });
        var sendTask = client.SendDataAsync(unknownSize, FrameType.FileData, new byte[3 << 20], final: true);
        var r = await unknownSize.CollectAsync();
        Assert.Equal("no_space", r.Error!.Code);
        var announced = await WriteAsync(client, target, new byte[2 << 20]);
        Assert.Equal("no_space", announced.Error!.Code);
        var list = await client.RequestAsync(new Request { ListDir = new ListDirRequest { Path = small } });
        Assert.Empty(list.Responses.SelectMany(x => x.Entries.Entries));
        Assert.NotNull((await WriteAsync(client, target, new byte[100_000])).Final.FileInfo);
    }

    [Fact]
    public async Task A_cancelled_write_leaves_the_target_untouched_and_no_temporary_file()
    {
        var (agent, client, dir) = await StartAsync();
        await using var _ = agent;
        await using var __ = client;
        string path = Path.Combine(dir, "keep.txt");
        await File.WriteAllTextAsync(path, "original");
        var stream = await client.StartAsync(new Request { FileWrite = new FileWriteRequest { Path = path } });
        await client.SendDataAsync(stream, FrameType.FileData, new byte[100_000], final: false);
        await client.CancelAsync(stream);
        var sw = Stopwatch.StartNew();
        while (Directory.GetFiles(dir, ".*.tmp").Length > 0 || sw.ElapsedMilliseconds < 200)
        {
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(5), "temporary file left behind");
            await Task.Delay(20);
        }
        Assert.Equal("original", await File.ReadAllTextAsync(path));
    }

    [Fact]
    public async Task List_dir_descends_to_the_requested_depth_without_following_symlinks()
    {
        var (agent, client, dir) = await StartAsync();
        await using var _ = agent;
        await using var __ = client;
        Directory.CreateDirectory(Path.Combine(dir, "d1", "d2", "d3"));
        await File.WriteAllTextAsync(Path.Combine(dir, "top.txt"), "t");
        await File.WriteAllTextAsync(Path.Combine(dir, "d1", "mid.txt"), "m");
        await File.WriteAllTextAsync(Path.Combine(dir, "d1", "d2", "deep.txt"), "d");
        File.CreateSymbolicLink(Path.Combine(dir, "loop"), dir);

        async Task<List<FileInfo>> List(uint depth, uint max = 0)
        {
            var r = await client.RequestAsync(new Request { ListDir = new ListDirRequest { Path = dir, Depth = depth, MaxEntries = max } });
            Assert.Null(r.Error);
            return r.Responses.SelectMany(x => x.Entries.Entries).ToList();
        }

        var one = await List(1);
        Assert.Equal(["d1", "loop", "top.txt"], one.Select(e => e.Name).Order());
        Assert.All(one, e => Assert.StartsWith(dir + "/", e.Path));
        var link = one.Single(e => e.Name == "loop");
        Assert.Equal(FileType.Symlink, link.Type);
        Assert.Equal(dir, link.SymlinkTarget);
        Assert.Equal(FileType.Directory, one.Single(e => e.Name == "d1").Type);

        var two = await List(2);
        Assert.Equal([Path.Combine(dir, "d1"), Path.Combine(dir, "d1", "d2"), Path.Combine(dir, "d1", "mid.txt"), Path.Combine(dir, "loop"), Path.Combine(dir, "top.txt")], two.Select(e => e.Path).Order());
        var all = await List(10);
        Assert.Contains(all, e => e.Path == Path.Combine(dir, "d1", "d2", "deep.txt"));
        Assert.DoesNotContain(all, e => e.Path.StartsWith(Path.Combine(dir, "loop") + "/"));

        var limited = await client.RequestAsync(new Request { ListDir = new ListDirRequest { Path = dir, Depth = 10, MaxEntries = 2 } });
        Assert.Equal(2, limited.Responses.Sum(x => x.Entries.Entries.Count));
        Assert.True(limited.Final.Entries.Truncated);
        Assert.Equal("not_a_directory", (await client.RequestAsync(new Request { ListDir = new ListDirRequest { Path = Path.Combine(dir, "top.txt") } })).Error!.Code);
    }

    [Fact]
    public async Task A_large_listing_is_split_into_several_responses()
    {
        var (agent, client, dir) = await StartAsync();
        await using var _ = agent;
        await using var __ = client;
        string many = Path.Combine(dir, "many");
        Directory.CreateDirectory(many);
        for (int i = 0; i < 3000; i++)
            File.WriteAllText(Path.Combine(many, $"file-with-a-fairly-long-name-{i:D5}.txt"), "");
        var r = await client.RequestAsync(new Request { ListDir = new ListDirRequest { Path = many } });
        Assert.True(r.Responses.Count > 1);
        Assert.All(r.Responses.Take(r.Responses.Count - 1), x => Assert.NotNull(x.Entries));
        Assert.Equal(3000, r.Responses.Sum(x => x.Entries.Entries.Count));
        Assert.All(r.Frames, f => Assert.True(f.Payload.Length < ProtocolConstants.DefaultMaxFramePayload));
        Assert.False(r.Final.Entries.Truncated);
    }

    [Fact]
    public async Task Stat_reports_a_symlink_as_a_symlink_with_its_target()
    {
        var (agent, client, dir) = await StartAsync();
        await using var _ = agent;
        await using var __ = client;
        string target = Path.Combine(dir, "target.txt");
        await File.WriteAllTextAsync(target, "12345");
        File.CreateSymbolicLink(Path.Combine(dir, "link"), "target.txt");
        var link = (await client.RequestAsync(new Request { Stat = new StatRequest { Path = Path.Combine(dir, "link") } })).Final.FileInfo;
        Assert.Equal(FileType.Symlink, link.Type);
        Assert.Equal("target.txt", link.SymlinkTarget);
        Assert.Equal("link", link.Name);
        var file = (await client.RequestAsync(new Request { Stat = new StatRequest { Path = target } })).Final.FileInfo;
        Assert.Equal(FileType.File, file.Type);
        Assert.Equal(5ul, file.Size);
        Assert.Equal("root", file.Owner);
        Assert.True(Math.Abs(file.MtimeUnixMs - DateTimeOffset.UtcNow.ToUnixTimeMilliseconds()) < 60_000);
        Assert.Equal("not_found", (await client.RequestAsync(new Request { Stat = new StatRequest { Path = Path.Combine(dir, "nope") } })).Error!.Code);
    }

    [Fact]
    public async Task Make_dir_remove_and_rename_report_their_errors()
    {
        var (agent, client, dir) = await StartAsync();
        await using var _ = agent;
        await using var __ = client;
        Task<StreamResult> Do(Request r) => client.RequestAsync(r);
        string nested = Path.Combine(dir, "x", "y", "z");

        Assert.Equal("not_found", (await Do(new Request { MakeDir = new MakeDirRequest { Path = nested } })).Error!.Code);
        var made = await Do(new Request { MakeDir = new MakeDirRequest { Path = nested, Parents = true, Mode = 0x1C0 /* 0700 */ } });
        Assert.Equal(FileType.Directory, made.Final.FileInfo.Type);
        Assert.Equal(0x1C0u, made.Final.FileInfo.Mode & 0xFFF);
        Assert.True(Directory.Exists(nested));
        Assert.Equal("already_exists", (await Do(new Request { MakeDir = new MakeDirRequest { Path = nested } })).Error!.Code);
        Assert.NotNull((await Do(new Request { MakeDir = new MakeDirRequest { Path = nested, Parents = true } })).Final.FileInfo);

        Assert.Equal("not_empty", (await Do(new Request { Remove = new RemoveRequest { Path = Path.Combine(dir, "x") } })).Error!.Code);
        Assert.Equal("not_found", (await Do(new Request { Remove = new RemoveRequest { Path = Path.Combine(dir, "nothing") } })).Error!.Code);
        Assert.Equal("invalid_argument", (await Do(new Request { Remove = new RemoveRequest { Path = "/", Recursive = true } })).Error!.Code);
        Assert.Equal("invalid_argument", (await Do(new Request { Remove = new RemoveRequest { Path = "/tmp/..", Recursive = true } })).Error!.Code);

        string a = Path.Combine(dir, "a.txt"), b = Path.Combine(dir, "b.txt");
        await File.WriteAllTextAsync(a, "A");
        await File.WriteAllTextAsync(b, "B");
        Assert.Equal("already_exists", (await Do(new Request { Rename = new RenameRequest { From = a, To = b } })).Error!.Code);
        Assert.NotNull((await Do(new Request { Rename = new RenameRequest { From = a, To = b, Overwrite = true } })).Final.Ok);
        Assert.Equal("A", await File.ReadAllTextAsync(b));
        Assert.False(File.Exists(a));
        Assert.Equal("not_found", (await Do(new Request { Rename = new RenameRequest { From = a, To = b } })).Error!.Code);

        Assert.NotNull((await Do(new Request { Remove = new RemoveRequest { Path = Path.Combine(dir, "x"), Recursive = true } })).Final.Ok);
        Assert.False(Directory.Exists(Path.Combine(dir, "x")));
    }

    [Fact]
    public async Task Recursive_remove_never_follows_symlinks()
    {
        var (agent, client, dir) = await StartAsync();
        await using var _ = agent;
        await using var __ = client;
        string outside = Path.Combine(dir, "outside");
        Directory.CreateDirectory(outside);
        await File.WriteAllTextAsync(Path.Combine(outside, "precious.txt"), "keep me");
        string victim = Path.Combine(dir, "victim");
        Directory.CreateDirectory(Path.Combine(victim, "sub"));
        File.CreateSymbolicLink(Path.Combine(victim, "sub", "escape"), outside);
        File.CreateSymbolicLink(Path.Combine(victim, "file-link"), Path.Combine(outside, "precious.txt"));
        var r = await client.RequestAsync(new Request { Remove = new RemoveRequest { Path = victim, Recursive = true } });
        Assert.NotNull(r.Final.Ok);
        Assert.False(Directory.Exists(victim));
        Assert.Equal("keep me", await File.ReadAllTextAsync(Path.Combine(outside, "precious.txt")));
    }

    [Fact]
    public async Task File_operations_run_with_the_permissions_of_the_requested_user()
    {
        var (agent, client, dir) = await StartAsync();
        await using var _ = agent;
        await using var __ = client;
        string secret = Path.Combine(dir, "secret.txt");
        await File.WriteAllTextAsync(secret, "root only");
        File.SetUnixFileMode(secret, UnixFileMode.UserRead | UnixFileMode.UserWrite);
        File.SetUnixFileMode(agent.Dir, (UnixFileMode)0x1ED); // 0755 so uid 4321 can traverse
        File.SetUnixFileMode(dir, (UnixFileMode)0x1FF); // 0777: anyone may create here
        var denied = await client.RequestAsync(new Request { FileRead = new FileReadRequest { Path = secret, User = "4321" } });
        Assert.Equal("permission_denied", denied.Error!.Code);
        var asRoot = await client.RequestAsync(new Request { FileRead = new FileReadRequest { Path = secret } });
        Assert.Equal("root only", System.Text.Encoding.UTF8.GetString(asRoot.FileBytes));

        var written = await WriteAsync(client, Path.Combine(dir, "mine.txt"), "hello"u8.ToArray(), user: "4321");
        Assert.Equal(4321u, written.Final.FileInfo.Uid);
        Assert.Equal(4321u, written.Final.FileInfo.Gid);
        var made = await client.RequestAsync(new Request { MakeDir = new MakeDirRequest { Path = Path.Combine(dir, "userdir", "sub"), Parents = true, User = "4321" } });
        Assert.Equal(4321u, made.Final.FileInfo.Uid);
        string rootOwned = Path.Combine(agent.Dir, "root-owned.txt"); // in a 0755 root directory
        await File.WriteAllTextAsync(rootOwned, "x");
        Assert.Equal("permission_denied", (await client.RequestAsync(new Request { Remove = new RemoveRequest { Path = rootOwned, User = "4321" } })).Error!.Code);
        Assert.True(File.Exists(rootOwned));
    }
}
