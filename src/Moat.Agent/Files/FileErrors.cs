using Moat.Agent.Interop;

namespace Moat.Agent.Files;

/// <summary>errno → the protocol's stable error codes.</summary>
internal static class FileErrors
{
    public static string Code(int errno) => errno switch
    {
        Libc.ENOENT => "not_found",
        Libc.EACCES or Libc.EPERM or Libc.EROFS => "permission_denied",
        Libc.ENOTDIR => "not_a_directory",
        Libc.EISDIR => "is_a_directory",
        Libc.EEXIST => "already_exists",
        Libc.ENOTEMPTY => "not_empty",
        Libc.ENOSPC or Libc.EDQUOT => "no_space",
        Libc.EFBIG => "too_large",
        Libc.EINVAL or Libc.ENAMETOOLONG or Libc.ELOOP or Libc.EXDEV => "invalid_argument",
        Libc.EBUSY or Libc.ETXTBSY => "busy",
        Libc.ENXIO or Libc.ENODEV => "not_a_file",
        _ => "io_error",
    };

    public static string Describe(string what, string path, int errno) => $"{what} {path}: {Message(errno)}";

    private static string Message(int errno) => errno switch
    {
        Libc.ENOENT => "no such file or directory",
        Libc.EACCES or Libc.EPERM => "permission denied",
        Libc.EROFS => "read-only file system",
        Libc.ENOTDIR => "not a directory",
        Libc.EISDIR => "is a directory",
        Libc.EEXIST => "already exists",
        Libc.ENOTEMPTY => "directory not empty",
        Libc.ENOSPC => "no space left on device",
        Libc.EDQUOT => "disk quota exceeded",
        Libc.ELOOP => "too many levels of symbolic links",
        Libc.ENAMETOOLONG => "name too long",
        Libc.EXDEV => "cannot rename across file systems",
        _ => $"errno {errno}",
    };
}
