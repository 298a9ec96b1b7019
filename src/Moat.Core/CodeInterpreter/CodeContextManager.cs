using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using System.Security.Cryptography;
using Microsoft.Extensions.Logging;
using Moat.Core.Errors;
using Moat.Core.Sandboxes;

namespace Moat.Core.CodeInterpreter;

/// <summary>
/// Stateful code execution in sandboxes, without Jupyter: each code context is one long-lived
/// interpreter (python3, node or bash) started through the sandbox's agent and driven by a small
/// kernel script Moat passes on its command line. Variables, imports and the working directory
/// persist between executions of a context; contexts of one sandbox are independent processes.
/// Each sandbox has a default context per language, made on first use. Contexts live as long as
/// their sandbox (and this server process: after a restart the old interpreters are killed and
/// contexts start afresh).
/// </summary>
public sealed partial class CodeContextManager(SandboxManager sandboxes, ILogger<CodeContextManager> logger) : IAsyncDisposable
{
    /// <summary>Contexts a sandbox may have at once (each is a process with its own memory).</summary>
    public const int MaxContextsPerSandbox = 32;

    /// <summary>Largest cell accepted.</summary>
    public const int MaxCodeLength = 4 << 20;

    /// <summary>Working directory of a context that names none.</summary>
    public const string DefaultCwd = "/home/user";

    /// <summary>Tag of every kernel process, followed by its context id.</summary>
    public const string KernelTag = "moat-code:";

    private readonly ConcurrentDictionary<string, SandboxContexts> _sandboxes = new();

    private SandboxManager Sandboxes => sandboxes;

    /// <summary>Creates a context and starts its interpreter.</summary>
    public async Task<CodeContextInfo> CreateContextAsync(string sandboxId, string tenantId, string? language, string? cwd, CancellationToken cancellationToken)
    {
        var lang = CodeLanguages.Parse(language);
        var contexts = await ContextsOfAsync(sandboxId, tenantId, cancellationToken).ConfigureAwait(false);
        var context = contexts.Add(lang, ValidCwd(cwd));
        try
        {
            await context.EnsureStartedAsync(cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            contexts.Remove(context.Id);
            await context.DisposeAsync().ConfigureAwait(false);
            throw;
        }
        return context.Info;
    }

    /// <summary>The sandbox's contexts.</summary>
    public async Task<IReadOnlyList<CodeContextInfo>> ListContextsAsync(string sandboxId, string tenantId, CancellationToken cancellationToken)
    {
        var contexts = await ContextsOfAsync(sandboxId, tenantId, cancellationToken).ConfigureAwait(false);
        return contexts.All.Select(c => c.Info).ToList();
    }

    /// <summary>Replaces a context's interpreter with a fresh one: its state is gone, its id stays.</summary>
    public async Task RestartContextAsync(string sandboxId, string tenantId, string contextId, CancellationToken cancellationToken)
    {
        var contexts = await ContextsOfAsync(sandboxId, tenantId, cancellationToken).ConfigureAwait(false);
        var context = contexts.Get(contextId) ?? throw ContextNotFound(sandboxId, contextId);
        await context.RestartAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Ends a context and its interpreter.</summary>
    public async Task RemoveContextAsync(string sandboxId, string tenantId, string contextId, CancellationToken cancellationToken)
    {
        var contexts = await ContextsOfAsync(sandboxId, tenantId, cancellationToken).ConfigureAwait(false);
        var context = contexts.Remove(contextId) ?? throw ContextNotFound(sandboxId, contextId);
        await context.DisposeAsync().ConfigureAwait(false);
    }

    /// <summary>
    /// Runs code and streams what it produces, ending with <see cref="CodeExecutionEnd"/>. In the
    /// given context, or the sandbox's default context of the language (python when none is
    /// given). Executions of one context run one after another.
    /// </summary>
    public async IAsyncEnumerable<CodeEvent> ExecuteAsync(string sandboxId, string tenantId, CodeRequest request, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        if (request.Code.Length > MaxCodeLength)
            throw MoatException.Invalid("code_too_large", $"the code is {request.Code.Length} characters; the limit is {MaxCodeLength}");
        if (request.ContextId is not null && request.Language is not null)
            throw MoatException.Invalid("invalid_code_request", "give a context id or a language, not both");
        if (request.Timeout is { } t && (t <= TimeSpan.Zero || t > TimeSpan.FromDays(365)))
            throw MoatException.Invalid("invalid_timeout", "a code timeout must be positive and under a year");
        if (request.Env is not null)
            SandboxLimits.ValidateEnv(request.Env, 1024);
        var contexts = await ContextsOfAsync(sandboxId, tenantId, cancellationToken).ConfigureAwait(false);
        CodeContext context = request.ContextId is { } id
            ? contexts.Get(id) ?? throw ContextNotFound(sandboxId, id)
            : await contexts.DefaultAsync(CodeLanguages.Parse(request.Language), cancellationToken).ConfigureAwait(false);
        await foreach (var evt in context.ExecuteAsync(request, cancellationToken).ConfigureAwait(false))
            yield return evt;
    }

    /// <summary>Starts the sandbox's default context of a language ahead of its first use.</summary>
    public async Task WarmAsync(string sandboxId, string tenantId, CodeLanguage language, CancellationToken cancellationToken)
    {
        try
        {
            var contexts = await ContextsOfAsync(sandboxId, tenantId, cancellationToken).ConfigureAwait(false);
            await contexts.DefaultAsync(language, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is MoatException or OperationCanceledException)
        {
            LogWarmFailed(logger, sandboxId, language.Name(), ex.Message);
        }
    }

    private static MoatException ContextNotFound(string sandboxId, string contextId) =>
        new(ErrorKind.NotFound, "context_not_found", $"code context '{contextId}' does not exist in sandbox {sandboxId}");

    private static string ValidCwd(string? cwd)
    {
        if (string.IsNullOrEmpty(cwd))
            return DefaultCwd;
        if (cwd[0] != '/' || cwd.Length > 4096 || cwd.Contains('\0'))
            throw MoatException.Invalid("invalid_cwd", "cwd must be an absolute path inside the sandbox");
        return cwd;
    }

    private async Task<SandboxContexts> ContextsOfAsync(string sandboxId, string tenantId, CancellationToken cancellationToken)
    {
        // Checks the sandbox exists for this tenant (404 otherwise) and is running (409).
        var record = await sandboxes.GetAsync(sandboxId, tenantId, cancellationToken).ConfigureAwait(false);
        if (record.State != SandboxState.Running)
        {
            if (record.State.IsTerminal())
                await ForgetAsync(sandboxId).ConfigureAwait(false);
            throw new MoatException(ErrorKind.Conflict, "sandbox_not_running", $"sandbox {sandboxId} is {record.State.Name()}");
        }
        if (_sandboxes.TryGetValue(sandboxId, out var existing))
            return existing;
        var created = new SandboxContexts(this, sandboxId, tenantId);
        var contexts = _sandboxes.GetOrAdd(sandboxId, created);
        if (ReferenceEquals(contexts, created))
            await KillLeftoverKernelsAsync(sandboxId, tenantId, cancellationToken).ConfigureAwait(false);
        return contexts;
    }

    /// <summary>Interpreters of a previous server process are nobody's now: they go.</summary>
    private async Task KillLeftoverKernelsAsync(string sandboxId, string tenantId, CancellationToken cancellationToken)
    {
        try
        {
            foreach (var process in await sandboxes.ListCommandsAsync(sandboxId, tenantId, cancellationToken).ConfigureAwait(false))
            {
                if (process.Running && process.Tag.StartsWith(KernelTag, StringComparison.Ordinal))
                    await sandboxes.SignalCommandAsync(sandboxId, tenantId, process.Pid, 9, cancellationToken).ConfigureAwait(false);
            }
        }
        catch (MoatException ex)
        {
            LogLeftoversFailed(logger, sandboxId, ex.Message);
        }
    }

    /// <summary>Called when an interpreter exits: a sandbox that ended takes all its contexts with it.</summary>
    private async Task OnKernelExitedAsync(string sandboxId, string tenantId)
    {
        try
        {
            var record = await sandboxes.GetAsync(sandboxId, tenantId, CancellationToken.None).ConfigureAwait(false);
            if (record.State != SandboxState.Running && record.State != SandboxState.Paused)
                await ForgetAsync(sandboxId).ConfigureAwait(false);
        }
        catch (MoatException)
        {
            await ForgetAsync(sandboxId).ConfigureAwait(false);
        }
    }

    private async Task ForgetAsync(string sandboxId)
    {
        if (!_sandboxes.TryRemove(sandboxId, out var contexts))
            return;
        foreach (var context in contexts.All)
            await context.DisposeAsync().ConfigureAwait(false);
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        foreach (var id in _sandboxes.Keys.ToList())
            await ForgetAsync(id).ConfigureAwait(false);
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not start the default {Language} context of sandbox {SandboxId}: {Reason}")]
    private static partial void LogWarmFailed(ILogger logger, string sandboxId, string language, string reason);

    [LoggerMessage(Level = LogLevel.Warning, Message = "Could not clean up old interpreters in sandbox {SandboxId}: {Reason}")]
    private static partial void LogLeftoversFailed(ILogger logger, string sandboxId, string reason);

    /// <summary>The contexts of one sandbox.</summary>
    private sealed class SandboxContexts(CodeContextManager owner, string sandboxId, string tenantId)
    {
        private readonly ConcurrentDictionary<string, CodeContext> _contexts = new();
        private readonly ConcurrentDictionary<CodeLanguage, CodeContext> _defaults = new();
        private readonly SemaphoreSlim _defaultGate = new(1, 1);

        public IEnumerable<CodeContext> All => _contexts.Values.OrderBy(c => c.Created);

        public CodeContext? Get(string id) => _contexts.TryGetValue(id, out var c) ? c : null;

        public CodeContext Add(CodeLanguage language, string cwd)
        {
            if (_contexts.Count >= MaxContextsPerSandbox)
                throw new MoatException(ErrorKind.QuotaExceeded, "too_many_contexts", $"sandbox {sandboxId} already has {_contexts.Count} code contexts (limit {MaxContextsPerSandbox}); remove some");
            var id = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(12));
            var context = new CodeContext(owner.Sandboxes, sandboxId, tenantId, id, language, cwd, () => owner.OnKernelExitedAsync(sandboxId, tenantId));
            _contexts[id] = context;
            return context;
        }

        public CodeContext? Remove(string id)
        {
            if (!_contexts.TryRemove(id, out var context))
                return null;
            foreach (var (language, d) in _defaults)
            {
                if (ReferenceEquals(d, context))
                    _defaults.TryRemove(language, out _);
            }
            return context;
        }

        public async Task<CodeContext> DefaultAsync(CodeLanguage language, CancellationToken cancellationToken)
        {
            if (_defaults.TryGetValue(language, out var existing))
                return existing;
            await _defaultGate.WaitAsync(cancellationToken).ConfigureAwait(false);
            try
            {
                if (_defaults.TryGetValue(language, out existing))
                    return existing;
                var context = Add(language, DefaultCwd);
                try
                {
                    await context.EnsureStartedAsync(cancellationToken).ConfigureAwait(false);
                }
                catch
                {
                    Remove(context.Id);
                    await context.DisposeAsync().ConfigureAwait(false);
                    throw;
                }
                _defaults[language] = context;
                return context;
            }
            finally
            {
                _defaultGate.Release();
            }
        }
    }
}

/// <summary>One code context: an id, a language, a working directory, and the interpreter that holds its state.</summary>
internal sealed class CodeContext(SandboxManager sandboxes, string sandboxId, string tenantId, string id, CodeLanguage language, string cwd, Func<Task> onExited) : IAsyncDisposable
{
    private readonly SemaphoreSlim _gate = new(1, 1);
    private Kernel? _kernel;
    private bool _disposed;

    public string Id => id;

    public DateTimeOffset Created { get; } = DateTimeOffset.UtcNow;

    public CodeContextInfo Info => new(id, language.Name(), cwd);

    /// <summary>Starts the interpreter if it is not running.</summary>
    public async Task EnsureStartedAsync(CancellationToken cancellationToken)
    {
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            await StartIfNeededAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _gate.Release();
        }
    }

    private async Task<Kernel> StartIfNeededAsync(CancellationToken cancellationToken)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_kernel is { Completion.IsCompleted: false } running)
            return running;
        if (_kernel is { } dead)
            await dead.DisposeAsync().ConfigureAwait(false);
        _kernel = null;
        var kernel = await Kernel.StartAsync(sandboxes, sandboxId, tenantId, language, cwd, CodeContextManager.KernelTag + id, cancellationToken).ConfigureAwait(false);
        _kernel = kernel;
        _ = kernel.Completion.ContinueWith(_ => onExited(), CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default).Unwrap();
        return kernel;
    }

    /// <summary>Runs one execution (after any running one), starting the interpreter if it is not running.</summary>
    public async IAsyncEnumerable<CodeEvent> ExecuteAsync(CodeRequest request, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            var kernel = await StartIfNeededAsync(cancellationToken).ConfigureAwait(false);
            await foreach (var evt in kernel.ExecuteAsync(request, cancellationToken).ConfigureAwait(false))
                yield return evt;
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>Kills the interpreter and starts a fresh one.</summary>
    public async Task RestartAsync(CancellationToken cancellationToken)
    {
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            if (_kernel is { } old)
            {
                _kernel = null;
                await old.DisposeAsync().ConfigureAwait(false);
            }
            await StartIfNeededAsync(cancellationToken).ConfigureAwait(false);
        }
        finally
        {
            _gate.Release();
        }
    }

    public async ValueTask DisposeAsync()
    {
        _disposed = true;
        var kernel = Interlocked.Exchange(ref _kernel, null);
        if (kernel is not null)
            await kernel.DisposeAsync().ConfigureAwait(false);
    }
}
