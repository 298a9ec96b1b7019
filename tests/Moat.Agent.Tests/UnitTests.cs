using Moat.Agent.Files;
using Moat.Agent.Processes;
using Moat.Agent.Users;
using Moat.Protocol;

namespace Moat.Agent.Tests;

/// <summary>In-process tests of the agent's pure parsing and bookkeeping code.</summary>
public sealed class AccountFilesTests
{
    private const string Passwd = """
        root:x:0:0:root:/root:/bin/bash
        # a comment
        daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
        broken line without colons
        alice:x:1001:1001:Alice,,,:/home/alice:/bin/zsh
        bad:x:notanumber:1:::
        alice:x:2002:2002::/duplicate:/bin/sh
        nohome:x:1002:1002:::
        """;

    private const string Group = """
        root:x:0:
        docker:x:998:alice, bob
        wheel:x:10:alice
        alice:x:1001:
        staff:x:50:
        garbage
        """;

    [Fact]
    public void Passwd_lines_are_parsed_and_malformed_ones_skipped()
    {
        var files = AccountFiles.Parse(Passwd, Group);
        var alice = files.ByName("alice")!;
        Assert.Equal(1001u, alice.Uid);
        Assert.Equal(1001u, alice.Gid);
        Assert.Equal("/home/alice", alice.Home);
        Assert.Equal("/bin/zsh", alice.Shell);
        Assert.Null(files.ByName("bad"));
        Assert.Null(files.ByName("broken line without colons"));
        Assert.Equal("daemon", files.ByUid(1)!.Name);
        Assert.Equal("docker", files.GroupByGid(998)!.Name);
    }

    [Fact]
    public void Supplementary_groups_come_from_group_membership()
    {
        var files = AccountFiles.Parse(Passwd, Group);
        Assert.Equal([1001u, 998u, 10u], files.GroupsOf("alice", 1001));
        Assert.Equal([5u], files.GroupsOf("nobody", 5));
    }

    [Fact]
    public void Empty_or_missing_files_parse_to_nothing()
    {
        var files = AccountFiles.Parse(null, "");
        Assert.Null(files.ByName("root"));
        Assert.Equal([0u], files.GroupsOf("root", 0));
    }

    [Fact]
    public void The_user_database_resolves_the_default_user_root_numbers_and_names()
    {
        string dir = Directory.CreateTempSubdirectory("moat-accounts").FullName;
        try
        {
            File.WriteAllText(Path.Combine(dir, "passwd"), Passwd);
            File.WriteAllText(Path.Combine(dir, "group"), Group);
            static (long, long, ulong) Stamp(string path)
            {
                var info = new FileInfo(path);
                return info.Exists ? (info.LastWriteTimeUtc.Ticks, info.Length, 0UL) : (-1L, -1L, 0UL);
            }
            var db = new UserDatabase(Path.Combine(dir, "passwd"), Path.Combine(dir, "group"), Stamp);
            var user = db.Resolve("", "user")!;
            Assert.Equal((1000u, 1000u, "/home/user", "user"), (user.Uid, user.Gid, user.Home, user.Name));
            Assert.Equal(0u, db.Resolve("root", "user")!.Uid);
            Assert.Equal(0u, db.Resolve("", "root")!.Uid);
            var alice = db.Resolve("alice", "user")!;
            Assert.Equal([1001u, 998u, 10u], alice.Groups);
            var byNumber = db.Resolve("1001", "user")!;
            Assert.Equal("alice", byNumber.Name);
            var unknownNumber = db.Resolve("4242", "user")!;
            Assert.Equal((4242u, 4242u, "/"), (unknownNumber.Uid, unknownNumber.Gid, unknownNumber.Home));
            Assert.Null(db.Resolve("ghost", "user"));
            Assert.Null(db.Resolve("99999999999999", "user"));
            Assert.Equal("/", db.Resolve("nohome", "user")!.Home);

            // Changes to the files are picked up.
            File.AppendAllText(Path.Combine(dir, "passwd"), "\nuser:x:1000:1000::/srv/user:/bin/sh\n");
            Assert.Equal("/srv/user", db.Resolve("user", "user")!.Home);
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }
}

public sealed class SandboxPathTests
{
    [Theory]
    [InlineData("/a/b/c", "/a/b/c")]
    [InlineData("/a//b/./c/", "/a/b/c")]
    [InlineData("/a/b/../c", "/a/c")]
    [InlineData("/../../etc", "/etc")]
    [InlineData("/", "/")]
    [InlineData("/tmp/..", "/")]
    [InlineData("notes.txt", "/home/user/notes.txt")]
    [InlineData("../x", "/home/x")]
    public void Paths_are_made_absolute_and_folded(string input, string expected)
        => Assert.Equal(expected, SandboxPath.Normalize(input, "/home/user"));

    [Theory]
    [InlineData("")]
    [InlineData("a\0b")]
    public void Invalid_paths_are_refused(string input) => Assert.Null(SandboxPath.Normalize(input, "/"));

    [Fact]
    public void Parent_and_name_split_a_normalised_path()
    {
        Assert.Equal("/a", SandboxPath.Parent("/a/b"));
        Assert.Equal("/", SandboxPath.Parent("/a"));
        Assert.Equal("b", SandboxPath.Name("/a/b"));
        Assert.Equal("/x", SandboxPath.Join("/", "x"));
    }
}

public sealed class ProcStatTests
{
    [Fact]
    public void A_stat_line_with_spaces_and_parentheses_in_the_name_parses()
    {
        string line = "4242 (we (ird) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 12 34 0 0 20 0 1 0 123456 1000000 250 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        Assert.True(ProcessTree.TryParse(line, out var s));
        Assert.Equal(4242, s.Pid);
        Assert.Equal(1, s.Ppid);
        Assert.Equal(4242, s.Pgrp);
        Assert.Equal(4242, s.Session);
        Assert.Equal(12ul, s.Utime);
        Assert.Equal(34ul, s.Stime);
        Assert.Equal(250, s.RssPages);
        Assert.Equal(0ul, s.ChildrenTime);
        Assert.True(ProcessTree.TryParse("7 (sh) S 1 7 7 0 -1 0 0 0 0 0 1 2 30 40 20 0 1 0 5 100 9 0", out var withChildren));
        Assert.Equal(70ul, withChildren.ChildrenTime);
        Assert.False(ProcessTree.TryParse("garbage", out _));
    }

    [Fact]
    public void Members_of_a_command_include_descendants_its_group_and_its_session()
    {
        var all = new List<ProcStat>
        {
            new(100, 1, 100, 100, 0, 0, 0),   // the leader
            new(101, 100, 100, 100, 0, 0, 0), // child
            new(102, 101, 102, 102, 0, 0, 0), // setsid grandchild, still linked by parent
            new(103, 1, 100, 100, 0, 0, 0),   // re-parented, still in the group
            new(104, 103, 104, 104, 0, 0, 0), // setsid child of the re-parented one
            new(200, 1, 200, 200, 0, 0, 0),   // unrelated
        };
        Assert.Equal([100, 101, 102, 103, 104], ProcessTree.Members(100, all).Order());
    }
}

public sealed class OutputRingTests
{
    [Fact]
    public void The_ring_keeps_order_across_channels_and_drops_the_oldest_when_full()
    {
        var ring = new OutputRing();
        ring.AppendDroppingOldest(FrameType.Stdout, new byte[600_000]);
        ring.AppendDroppingOldest(FrameType.Stderr, new byte[10]);
        Assert.False(ring.HeadCut);
        Assert.True(ring.AppendDroppingOldest(FrameType.Stdout, new byte[600_000]));
        Assert.True(ring.HeadCut);
        Assert.True(ring.Bytes <= OutputRing.PerProcessLimit);
        Assert.True(ring.TryPeek(out var type, out var data));
        Assert.Equal(FrameType.Stderr, type);
        ring.Consume(data.Length);
        Assert.Equal(0, ring.StderrBytes);
        Assert.Equal(600_000, ring.StdoutBytes);
        ring.Clear();
        Assert.Equal(0, ring.Bytes);
        Assert.Equal(0, OutputRing.GlobalBytes);
    }
}
