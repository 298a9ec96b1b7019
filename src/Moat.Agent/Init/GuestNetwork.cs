using System.Buffers.Binary;
using System.Net;
using System.Runtime.InteropServices;
using Moat.Agent.Diagnostics;
using Moat.Agent.Interop;

namespace Moat.Agent.Init;

/// <summary>
/// The guest's network as the host assigned it (<c>--net ADDRESS/PREFIX,GATEWAY,DNS,MTU</c> on the
/// kernel command line): the address of the sandbox's slot, Moat's end of the link as default
/// route and resolver. The host's rules for that address apply to every packet the guest sends.
/// </summary>
internal sealed record GuestNetworkSettings(IPAddress Address, int PrefixLength, IPAddress Gateway, IPAddress Dns, int Mtu)
{
    /// <summary>Parses the <c>--net</c> value; null when it is malformed.</summary>
    public static GuestNetworkSettings? Parse(string value)
    {
        var parts = value.Split(',');
        if (parts.Length != 4)
            return null;
        var cidr = parts[0].Split('/');
        if (cidr.Length != 2 || !IPAddress.TryParse(cidr[0], out var address) || !int.TryParse(cidr[1], out int prefix) || prefix is < 1 or > 32
            || !IPAddress.TryParse(parts[1], out var gateway) || !IPAddress.TryParse(parts[2], out var dns) || !int.TryParse(parts[3], out int mtu) || mtu is < 576 or > 65535)
            return null;
        return new GuestNetworkSettings(address, prefix, gateway, dns, mtu);
    }

    /// <summary>The resolv.conf the sandbox sees (the same as on the container tiers).</summary>
    public string ResolvConf => $"nameserver {Dns}\noptions ndots:0 attempts:2 timeout:2\n";
}

/// <summary>
/// Brings up the guest's interfaces with the classic ioctls (no netlink needed for one address
/// and one route): loopback always, and <c>eth0</c> (virtio-net) when the host gave the VM a NIC.
/// IPv6 is switched off in the guest, as it is in the sandbox namespaces of the other tiers.
/// </summary>
internal static unsafe class GuestNetwork
{
    private const int AF_INET = 2, SOCK_DGRAM = 2, SOCK_CLOEXEC = 0x80000;
    private const nuint SIOCADDRT = 0x890B, SIOCSIFFLAGS = 0x8914, SIOCGIFFLAGS = 0x8913, SIOCSIFADDR = 0x8916, SIOCSIFNETMASK = 0x891C, SIOCSIFMTU = 0x8922;
    private const short IFF_UP = 1;
    private const ushort RTF_UP = 1, RTF_GATEWAY = 2;

    /// <summary>Loopback up; eth0 configured when <paramref name="settings"/> is given. False (logged) on failure.</summary>
    public static bool Configure(GuestNetworkSettings? settings)
    {
        int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return Fail("socket");
        try
        {
            if (!Up(fd, "lo"))
                return false;
            foreach (var key in new[] { "all", "default", "lo" })
                WriteSysctl($"/proc/sys/net/ipv6/conf/{key}/disable_ipv6", "1");
            if (settings is null)
                return true;
            // virtio_net probes the device while its module loads; give a slow (TCG) guest a moment.
            long deadline = Environment.TickCount64 + 5_000;
            while (!Directory.Exists("/sys/class/net/eth0") && Environment.TickCount64 < deadline)
                Thread.Sleep(5);
            if (!Directory.Exists("/sys/class/net/eth0"))
            {
                AgentLog.Write("network: the host gave a NIC but eth0 did not appear");
                return false;
            }
            WriteSysctl("/proc/sys/net/ipv6/conf/eth0/disable_ipv6", "1");
            uint mask = settings.PrefixLength == 0 ? 0u : uint.MaxValue << (32 - settings.PrefixLength);
            var req = new IfReq();
            Name(&req, "eth0");
            SockAddr(req.Data, settings.Address);
            if (ioctl(fd, SIOCSIFADDR, &req) < 0)
                return Fail("SIOCSIFADDR eth0");
            SockAddr(req.Data, new IPAddress(BinaryPrimitives.ReverseEndianness(mask)));
            if (ioctl(fd, SIOCSIFNETMASK, &req) < 0)
                return Fail("SIOCSIFNETMASK eth0");
            new Span<byte>(req.Data, 24).Clear();
            *(int*)req.Data = settings.Mtu;
            if (ioctl(fd, SIOCSIFMTU, &req) < 0)
                return Fail("SIOCSIFMTU eth0");
            if (!Up(fd, "eth0"))
                return false;
            var route = new RtEntry();
            SockAddr(route.Destination, IPAddress.Any);
            SockAddr(route.Gateway, settings.Gateway);
            SockAddr(route.Mask, IPAddress.Any);
            route.Flags = RTF_UP | RTF_GATEWAY;
            if (ioctl(fd, SIOCADDRT, &route) < 0)
                return Fail("SIOCADDRT default");
            return true;
        }
        finally
        {
            Libc.close(fd);
        }
    }

    /// <summary>Writes the resolver file into the sandbox's root (after the switch into it).</summary>
    public static void WriteResolvConf(GuestNetworkSettings settings)
    {
        try
        {
            Directory.CreateDirectory("/etc");
            // A template's resolv.conf may be a link (systemd-resolved's): replace it, never write through it.
            File.Delete("/etc/resolv.conf");
            File.WriteAllText("/etc/resolv.conf", settings.ResolvConf);
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            AgentLog.Write($"network: /etc/resolv.conf: {ex.Message}");
        }
    }

    private static bool Up(int fd, string name)
    {
        var req = new IfReq();
        Name(&req, name);
        if (ioctl(fd, SIOCGIFFLAGS, &req) < 0)
            return Fail($"SIOCGIFFLAGS {name}");
        *(short*)req.Data |= IFF_UP;
        if (ioctl(fd, SIOCSIFFLAGS, &req) < 0)
            return Fail($"SIOCSIFFLAGS {name}");
        return true;
    }

    private static void Name(IfReq* req, string name)
    {
        var bytes = System.Text.Encoding.ASCII.GetBytes(name);
        for (int i = 0; i < bytes.Length && i < 15; i++)
            req->Name[i] = bytes[i];
    }

    /// <summary>A sockaddr_in for <paramref name="address"/> (port 0) at <paramref name="at"/>.</summary>
    private static void SockAddr(byte* at, IPAddress address)
    {
        new Span<byte>(at, 16).Clear();
        *(ushort*)at = AF_INET;
        address.TryWriteBytes(new Span<byte>(at + 4, 4), out _);
    }

    private static void WriteSysctl(string path, string value)
    {
        int fd;
        fixed (byte* p = Libc.Z(path))
            fd = Libc.open(p, Libc.O_WRONLY | Libc.O_CLOEXEC, 0);
        if (fd < 0)
            return; // no IPv6 in this kernel: nothing to switch off
        Libc.WriteAll(fd, System.Text.Encoding.ASCII.GetBytes(value));
        Libc.close(fd);
    }

    private static bool Fail(string what)
    {
        AgentLog.Write($"network: {what} failed (errno {Marshal.GetLastPInvokeError()})");
        return false;
    }

    /// <summary>struct ifreq: the name and a 24-byte union (sockaddr, flags, mtu).</summary>
    [StructLayout(LayoutKind.Sequential, Size = 40)]
    private struct IfReq
    {
        public fixed byte Name[16];
        public fixed byte Data[24];
    }

    /// <summary>struct rtentry (x86-64 layout).</summary>
    [StructLayout(LayoutKind.Explicit, Size = 120)]
    private struct RtEntry
    {
        [FieldOffset(8)] public fixed byte Destination[16];
        [FieldOffset(24)] public fixed byte Gateway[16];
        [FieldOffset(40)] public fixed byte Mask[16];
        [FieldOffset(56)] public ushort Flags;
    }

    [DllImport("libc", SetLastError = true)] private static extern int socket(int domain, int type, int protocol);
    [DllImport("libc", SetLastError = true)] private static extern int ioctl(int fd, nuint request, void* arg);
}
