namespace Moat.Runtimes.Microvm;

/// <summary>Configuration of the microVM tier (section <c>Moat:Qemu</c>).</summary>
public sealed class QemuOptions
{
    /// <summary>The QEMU system emulator.</summary>
    public string Binary { get; set; } = "qemu-system-x86_64";

    /// <summary>
    /// The guest kernel: an uncompressed vmlinux with a PVH entry point (booted directly) or a
    /// bzImage. Empty: the kernel build/kernel.sh unpacked (artifacts/kernel/vmlinux, else vmlinuz).
    /// </summary>
    public string Kernel { get; set; } = "";

    /// <summary>
    /// The guest kernel's modules (a lib/modules/RELEASE directory). Empty: <c>modules</c> next to
    /// the kernel, if present; without one, the drivers Moat needs (virtio-mmio, virtio-blk,
    /// virtio-console, ext4, overlayfs) must be built in.
    /// </summary>
    public string KernelModules { get; set; } = "";

    /// <summary><c>kvm</c> or <c>tcg</c> to force an accelerator; empty chooses by booting the guest with KVM once (cached per kernel and QEMU version).</summary>
    public string Accelerator { get; set; } = "";

    /// <summary>Parent cgroup of every VM's cgroup.</summary>
    public string CgroupParent { get; set; } = "/moat";

    /// <summary>Unprivileged user QEMU drops to once it has opened its files (<c>-runas</c>); empty keeps root.</summary>
    public string User { get; set; } = "moat-vmm";

    /// <summary>Guest RAM on top of the sandbox's memory limit, for the guest kernel and the agent (the limit binds user code).</summary>
    public int GuestOverheadMiB { get; set; } = 64;

    /// <summary>Host memory on top of the guest RAM that QEMU itself may use (its cgroup limit); TCG adds its translation cache.</summary>
    public int VmmOverheadMiB { get; set; } = 96;

    /// <summary>TCG translation cache in MiB (bounded, so that it counts in the VM's host memory).</summary>
    public int TcgCacheMiB { get; set; } = 64;

    /// <summary>Guest console kept by QEMU (a ring buffer) for failure reasons.</summary>
    public int ConsoleBytes { get; set; } = 64 << 10;

    /// <summary>TSC frequency given to a TCG guest (its own calibration is unreliable there); 0 reads it from /proc/cpuinfo.</summary>
    public int TscKhz { get; set; }

    /// <summary>How long a guest has to boot until its agent opens the port; 0 uses Moat:AgentStartTimeoutSeconds.</summary>
    public int BootTimeoutSeconds { get; set; }

    /// <summary>How many guests may boot at once (the rest wait their turn before QEMU starts); 0: the number of host CPUs, at least 2.</summary>
    public int ConcurrentBoots { get; set; }

    /// <summary>Where kernel-derived initramfs images and per-template disk images are cached; empty: DATA/cache/microvm.</summary>
    public string ImageCache { get; set; } = "";
}
