using Moat.Core.Host;

namespace Moat.Networking.Plumbing;

/// <summary>
/// A handle on a network namespace. <see cref="Run{T}"/> runs code on the calling thread inside it
/// (setns on that thread only, and back), which is how Moat makes sockets that live in the gateway,
/// the uplink or a sandbox namespace while the process stays where it is: a socket belongs to the
/// namespace it was created in for its whole life.
/// </summary>
public sealed class NetworkNamespace : IDisposable
{
    private readonly int _fd;
    private int _disposed;

    private NetworkNamespace(string path, int fd)
    {
        Path = path;
        _fd = fd;
    }

    /// <summary>The namespace file.</summary>
    public string Path { get; }

    /// <summary>The file of a named namespace (<c>ip netns</c> names), or the path itself.</summary>
    public static string PathOf(string nameOrPath) => nameOrPath.Contains('/') ? nameOrPath : $"/run/netns/{nameOrPath}";

    /// <summary>Opens a namespace by name or path.</summary>
    public static NetworkNamespace Open(string nameOrPath)
    {
        var path = PathOf(nameOrPath);
        return new NetworkNamespace(path, Linux.OpenNamespace(path));
    }

    /// <summary>Whether a named namespace exists.</summary>
    public static bool Exists(string nameOrPath) => File.Exists(PathOf(nameOrPath));

    /// <summary>Runs <paramref name="action"/> on this thread inside the namespace. Keep it synchronous and short: socket(), bind(), sysctl writes.</summary>
    public T Run<T>(Func<T> action)
    {
        ObjectDisposedException.ThrowIf(Volatile.Read(ref _disposed) != 0, this);
        int saved = Linux.OpenNamespace("/proc/thread-self/ns/net");
        try
        {
            Linux.EnterNamespace(_fd, Linux.CloneNewNet);
            try
            {
                return action();
            }
            finally
            {
                try
                {
                    Linux.EnterNamespace(saved, Linux.CloneNewNet);
                }
                catch (Exception ex)
                {
                    // A pool thread left in another namespace would create every later socket there.
                    Environment.FailFast("moat: could not return a thread to its network namespace", ex);
                }
            }
        }
        finally
        {
            Linux.CloseDescriptor(saved);
        }
    }

    /// <summary>Runs <paramref name="action"/> inside the namespace.</summary>
    public void Run(Action action) => Run<bool>(() =>
    {
        action();
        return true;
    });

    /// <summary>Writes a sysctl of this namespace (<c>net.ipv4.ip_forward</c> → /proc/sys/net/ipv4/ip_forward).</summary>
    public void Sysctl(string key, string value) => Run(() => File.WriteAllText("/proc/sys/" + key.Replace('.', '/'), value));

    /// <inheritdoc />
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
            Linux.CloseDescriptor(_fd);
    }
}
