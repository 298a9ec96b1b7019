using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;
using Moat.Agent.Tests.Infrastructure;

namespace Moat.Agent.Tests;

/// <summary>
/// The microVM tier's channel is a character device, not a socket. A pseudo-terminal stands in
/// for the virtio-serial port here: the agent opens the slave (and makes it raw), the test talks
/// through the master.
/// </summary>
public sealed class VirtioTransportTests
{
    [DllImport("libc", SetLastError = true)] private static extern int posix_openpt(int flags);
    [DllImport("libc", SetLastError = true)] private static extern int grantpt(int fd);
    [DllImport("libc", SetLastError = true)] private static extern int unlockpt(int fd);
    [DllImport("libc", SetLastError = true)] private static extern int ptsname_r(int fd, byte[] buffer, nint size);
    [DllImport("libc", SetLastError = true)] private static extern int tcgetattr(int fd, byte[] termios);

    [Fact]
    public async Task The_agent_serves_the_protocol_over_a_serial_device()
    {
        int master = posix_openpt(0x2 | 0x100 | 0x80000); // O_RDWR | O_NOCTTY | O_CLOEXEC
        Assert.True(master >= 0);
        Assert.Equal(0, grantpt(master));
        Assert.Equal(0, unlockpt(master));
        var name = new byte[128];
        Assert.Equal(0, ptsname_r(master, name, name.Length));
        string slave = System.Text.Encoding.ASCII.GetString(name, 0, Array.IndexOf(name, (byte)0));

        await using var agent = await AgentProcess.StartAsync("virtio:" + slave, null);
        // Until the agent has the slave open (and raw), the master reads EIO and would mangle bytes.
        var termios = new byte[64];
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (tcgetattr(master, termios) != 0 || (BitConverter.ToUInt32(termios, 12) & (0x2 | 0x8)) != 0)
        {
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(10), "the agent did not open the port");
            await Task.Delay(10);
        }
        var stream = new FileStream(new SafeFileHandle(master, ownsHandle: true), FileAccess.ReadWrite, bufferSize: 0);
        await using var client = await AgentClient.OverStreamAsync(null, stream);
        Assert.Equal("virtio-serial", client.Ack!.Transport);
        var r = await client.ShellAsync("head -c 300000 /dev/urandom | base64 -w0 | wc -c; printf 'bin\\r\\n\\0\\377'");
        Assert.StartsWith("400000", r.Stdout);
        Assert.EndsWith("bin\r\n\0\uFFFD", r.Stdout);
        Assert.Equal(0, r.Exit!.ExitCode);
    }
}
