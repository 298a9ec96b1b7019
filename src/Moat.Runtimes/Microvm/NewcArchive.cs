using System.Text;

namespace Moat.Runtimes.Microvm;

/// <summary>
/// Writes a cpio archive in the "newc" format the kernel unpacks as an initramfs: a 110-byte
/// ASCII header per entry (13 hex fields), the name, the data, each padded to 4 bytes, and a
/// <c>TRAILER!!!</c> entry at the end. Entries are written in the order given; parents first.
/// </summary>
internal sealed class NewcArchive(Stream output) : IDisposable
{
    private const int S_IFDIR = 0x4000, S_IFREG = 0x8000, S_IFCHR = 0x2000;
    private int _inode = 1;

    /// <summary>A directory.</summary>
    public void Directory(string path, int mode = 0x1ED) => Entry(path, S_IFDIR | mode, [], nlink: 2);

    /// <summary>A regular file.</summary>
    public void File(string path, ReadOnlySpan<byte> content, int mode = 0x1A4) => Entry(path, S_IFREG | mode, content);

    /// <summary>A character device node.</summary>
    public void CharacterDevice(string path, int major, int minor, int mode) => Entry(path, S_IFCHR | mode, [], rdevMajor: major, rdevMinor: minor);

    /// <summary>Ends the archive.</summary>
    public void Dispose()
    {
        Entry("TRAILER!!!", 0, []);
        output.Flush();
    }

    private void Entry(string path, int mode, ReadOnlySpan<byte> content, int nlink = 1, int rdevMajor = 0, int rdevMinor = 0)
    {
        var name = Encoding.UTF8.GetBytes(path.TrimStart('/'));
        var header = new StringBuilder("070701");
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        foreach (long field in new long[] { _inode++, mode, 0, 0, nlink, 0, content.Length, 0, 0, rdevMajor, rdevMinor, name.Length + 1, 0 })
            header.Append(field.ToString("X8", System.Globalization.CultureInfo.InvariantCulture));
        var head = Encoding.ASCII.GetBytes(header.ToString());
        output.Write(head);
        output.Write(name);
        output.WriteByte(0);
        Pad(head.Length + name.Length + 1);
        output.Write(content);
        Pad(content.Length);
    }

    private void Pad(long written)
    {
        for (long i = written; i % 4 != 0; i++)
            output.WriteByte(0);
    }
}
