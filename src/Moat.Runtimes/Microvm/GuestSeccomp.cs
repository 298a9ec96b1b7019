using System.Buffers.Binary;
using System.Text.Json;

namespace Moat.Runtimes.Microvm;

/// <summary>
/// Compiles Moat's seccomp profile (the OCI <c>linux.seccomp</c> object the container tiers hand to
/// runc) into the classic BPF program the guest agent installs on every command of a microVM, so
/// user code meets the same system-call policy in every tier. x86_64 only: other architectures,
/// and the x32 ABI, get the default action.
/// </summary>
/// <remarks>
/// Argument checks compare the low 32 bits when the profile's value fits in them, which is how the
/// kernel reads the int arguments the profile filters (socket's family, personality): a caller
/// cannot slip past a check by setting high bits the kernel then ignores.
/// </remarks>
internal static class GuestSeccomp
{
    private const ushort LdAbsW = 0x20, AluAndK = 0x54, JeqK = 0x15, JgtK = 0x25, JgeK = 0x35, RetK = 0x06;
    private const uint AuditArchX8664 = 0xC000003E, X32SyscallBit = 0x40000000;
    private const uint RetAllow = 0x7FFF0000, RetErrno = 0x00050000, RetKillProcess = 0x80000000, RetKillThread = 0, RetTrap = 0x00030000;
    private const uint OffsetNr = 0, OffsetArch = 4, OffsetArgs = 16;

    private readonly record struct Instruction(ushort Code, byte JumpTrue, byte JumpFalse, uint K);

    private sealed record Condition(int Index, string Op, ulong Value, ulong ValueTwo);

    private sealed record Rule(uint Action, IReadOnlyList<Condition> Conditions);

    /// <summary>The program as the kernel takes it (struct sock_filter[], little-endian).</summary>
    public static byte[] Compile(JsonElement profile)
    {
        uint defaultAction = Action(profile.GetProperty("defaultAction").GetString()!, ErrnoOf(profile, "defaultErrnoRet", 1));
        // Rules per syscall number, in profile order: the first whose conditions hold decides.
        var rules = new SortedDictionary<int, List<Rule>>();
        foreach (var entry in profile.GetProperty("syscalls").EnumerateArray())
        {
            uint action = Action(entry.GetProperty("action").GetString()!, ErrnoOf(entry, "errnoRet", ErrnoOf(profile, "defaultErrnoRet", 1)));
            var conditions = new List<Condition>();
            if (entry.TryGetProperty("args", out var args) && args.ValueKind == JsonValueKind.Array)
            {
                foreach (var a in args.EnumerateArray())
                {
                    conditions.Add(new Condition(a.GetProperty("index").GetInt32(), a.GetProperty("op").GetString()!, a.GetProperty("value").GetUInt64(),
                        a.TryGetProperty("valueTwo", out var two) ? two.GetUInt64() : 0));
                }
            }
            foreach (var name in entry.GetProperty("names").EnumerateArray())
            {
                // Names of other architectures (socketcall, _llseek, ...) do not exist here, as in libseccomp.
                if (!SyscallTableX8664.Numbers.TryGetValue(name.GetString()!, out int nr))
                    continue;
                if (!rules.TryGetValue(nr, out var list))
                    rules[nr] = list = [];
                list.Add(new Rule(action, conditions));
            }
        }

        var program = new List<Instruction>
        {
            new(LdAbsW, 0, 0, OffsetArch),
            new(JeqK, 1, 0, AuditArchX8664),
            new(RetK, 0, 0, defaultAction),
            new(LdAbsW, 0, 0, OffsetNr),
            new(JgeK, 0, 1, X32SyscallBit),
            new(RetK, 0, 0, defaultAction),
        };
        foreach (var (nr, list) in rules)
        {
            var block = new List<Instruction>();
            foreach (var rule in list)
            {
                EmitRule(block, rule);
                if (rule.Conditions.Count == 0)
                    break; // later rules for this call can never apply
            }
            if (list.All(r => r.Conditions.Count > 0))
                block.Add(new(RetK, 0, 0, defaultAction));
            if (block.Count > 255)
                throw new InvalidOperationException($"seccomp rules for syscall {nr} are too long to compile");
            // A still holds the number here: blocks that load arguments always end in a return.
            program.Add(new(JeqK, 0, (byte)block.Count, (uint)nr));
            program.AddRange(block);
        }
        program.Add(new(RetK, 0, 0, defaultAction));
        if (program.Count > 4096)
            throw new InvalidOperationException($"the seccomp program has {program.Count} instructions; the kernel takes at most 4096");

        var bytes = new byte[program.Count * 8];
        for (int i = 0; i < program.Count; i++)
        {
            var span = bytes.AsSpan(i * 8, 8);
            BinaryPrimitives.WriteUInt16LittleEndian(span, program[i].Code);
            span[2] = program[i].JumpTrue;
            span[3] = program[i].JumpFalse;
            BinaryPrimitives.WriteUInt32LittleEndian(span[4..], program[i].K);
        }
        return bytes;
    }

    /// <summary>Emits the checks of one rule; every failed check jumps past the rule's return.</summary>
    private static void EmitRule(List<Instruction> block, Rule rule)
    {
        var failJumps = new List<(int At, bool OnTrue)>();
        foreach (var c in rule.Conditions)
        {
            if (c.Index is < 0 or > 5)
                throw new InvalidOperationException($"seccomp argument index {c.Index} is out of range");
            uint low = OffsetArgs + (uint)c.Index * 8, high = low + 4;
            bool wide = c.Value > uint.MaxValue || (c.Op == "SCMP_CMP_MASKED_EQ" && c.ValueTwo > uint.MaxValue);
            if (wide)
            {
                if (c.Op is not ("SCMP_CMP_EQ" or "SCMP_CMP_MASKED_EQ"))
                    throw new NotSupportedException($"seccomp {c.Op} on a 64-bit value");
                // High word first, then the low word, each masked like the whole.
                ulong mask = c.Op == "SCMP_CMP_MASKED_EQ" ? c.Value : ulong.MaxValue;
                ulong expected = c.Op == "SCMP_CMP_MASKED_EQ" ? c.ValueTwo : c.Value;
                foreach (var (offset, shift) in new[] { (high, 32), (low, 0) })
                {
                    block.Add(new(LdAbsW, 0, 0, offset));
                    block.Add(new(AluAndK, 0, 0, (uint)(mask >> shift)));
                    failJumps.Add((block.Count, false));
                    block.Add(new(JeqK, 0, 0, (uint)(expected >> shift)));
                }
                continue;
            }
            block.Add(new(LdAbsW, 0, 0, low));
            uint v = (uint)c.Value;
            switch (c.Op)
            {
                case "SCMP_CMP_EQ":
                    failJumps.Add((block.Count, false));
                    block.Add(new(JeqK, 0, 0, v));
                    break;
                case "SCMP_CMP_NE":
                    failJumps.Add((block.Count, true));
                    block.Add(new(JeqK, 0, 0, v));
                    break;
                case "SCMP_CMP_LT":
                    failJumps.Add((block.Count, true));
                    block.Add(new(JgeK, 0, 0, v));
                    break;
                case "SCMP_CMP_LE":
                    failJumps.Add((block.Count, true));
                    block.Add(new(JgtK, 0, 0, v));
                    break;
                case "SCMP_CMP_GT":
                    failJumps.Add((block.Count, false));
                    block.Add(new(JgtK, 0, 0, v));
                    break;
                case "SCMP_CMP_GE":
                    failJumps.Add((block.Count, false));
                    block.Add(new(JgeK, 0, 0, v));
                    break;
                case "SCMP_CMP_MASKED_EQ":
                    block.Add(new(AluAndK, 0, 0, v));
                    failJumps.Add((block.Count, false));
                    block.Add(new(JeqK, 0, 0, (uint)c.ValueTwo));
                    break;
                default:
                    throw new NotSupportedException($"seccomp comparison {c.Op}");
            }
        }
        block.Add(new(RetK, 0, 0, rule.Action));
        int next = block.Count; // first instruction of the next rule
        foreach (var (at, onTrue) in failJumps)
        {
            int offset = next - (at + 1);
            if (offset > 255)
                throw new InvalidOperationException("a seccomp rule is too long to compile");
            var j = block[at];
            block[at] = onTrue ? j with { JumpTrue = (byte)offset } : j with { JumpFalse = (byte)offset };
        }
    }

    private static uint ErrnoOf(JsonElement element, string property, uint fallback) =>
        element.TryGetProperty(property, out var value) && value.ValueKind == JsonValueKind.Number ? value.GetUInt32() : fallback;

    private static uint Action(string action, uint errno) => action switch
    {
        "SCMP_ACT_ALLOW" or "SCMP_ACT_LOG" => RetAllow,
        "SCMP_ACT_ERRNO" => RetErrno | (errno & 0xFFFF),
        "SCMP_ACT_KILL_PROCESS" => RetKillProcess,
        "SCMP_ACT_KILL" or "SCMP_ACT_KILL_THREAD" => RetKillThread,
        "SCMP_ACT_TRAP" => RetTrap,
        _ => throw new NotSupportedException($"seccomp action {action}"),
    };
}
