package dev.hotload;

/**
 * A load that did not happen; the previous revision (if any) keeps serving. The message is
 * the reason an app sends in {@code failed}, in hotload-host's words:
 * {@code plugin auth revision r2: self-check failed: returned status 7}.
 */
public final class LoadException extends HotloadException {
    private static final long serialVersionUID = 1L;

    /** Why a load was refused. */
    public enum Kind {
        /** The digest is not sha256:&lt;64 lowercase hex&gt;. */
        BAD_DIGEST("bad_digest"),
        /** The bytes do not hash to the digest. */
        DIGEST_MISMATCH("digest_mismatch"),
        /** The artifact file could not be read. */
        READ("read"),
        /** The bytes are not a valid module for this host. */
        INVALID_WASM("invalid_wasm"),
        /** The module does not follow the plugin ABI (exports, imports). */
        ABI("abi"),
        /** Instantiation failed (start function, _initialize, …). */
        INSTANTIATE("instantiate"),
        /** The configure export failed or refused the config. */
        CONFIGURE("configure"),
        /** The self_check export failed. */
        SELF_CHECK("self_check"),
        /** The old revision's save_state failed. */
        SAVE_STATE("save_state"),
        /** The new revision's restore_state failed. */
        RESTORE_STATE("restore_state"),
        /** The host holds its maximum of plugins already. */
        TOO_MANY_PLUGINS("too_many_plugins");

        private final String label;

        Kind(String label) {
            this.label = label;
        }

        /** The kind as cases.json spells it. */
        public String label() {
            return label;
        }
    }

    private final Kind kind;
    private final String plugin;
    private final String revision;
    private final transient Failure failure;

    private LoadException(Kind kind, String plugin, String revision, Failure failure, String message, Throwable cause) {
        super(message, cause);
        this.kind = kind;
        this.plugin = plugin;
        this.revision = revision;
        this.failure = failure;
    }

    private static String who(String plugin, String revision) {
        return "plugin " + plugin + " revision " + revision;
    }

    static LoadException badDigest(String plugin, String revision, String digest) {
        return new LoadException(Kind.BAD_DIGEST, plugin, revision, null,
                who(plugin, revision) + ": malformed digest " + Json.quote(digest) + ": want sha256:<64 lowercase hex>", null);
    }

    static LoadException digestMismatch(String plugin, String revision, String expected, String actual) {
        return new LoadException(Kind.DIGEST_MISMATCH, plugin, revision, null,
                who(plugin, revision) + ": digest mismatch: expected " + expected + ", got " + actual, null);
    }

    static LoadException read(String plugin, String revision, String path, Exception cause) {
        String why = cause instanceof java.nio.file.NoSuchFileException ? "no such file or directory" : String.valueOf(cause.getMessage());
        return new LoadException(Kind.READ, plugin, revision, null,
                who(plugin, revision) + ": cannot read " + path + ": " + why, cause);
    }

    static LoadException noPath(String plugin, String revision) {
        return new LoadException(Kind.READ, plugin, revision, null, who(plugin, revision) + ": the load names no path", null);
    }

    static LoadException invalidWasm(String plugin, String revision, String reason, Throwable cause) {
        return new LoadException(Kind.INVALID_WASM, plugin, revision, null,
                who(plugin, revision) + ": invalid wasm: " + reason, cause);
    }

    static LoadException abi(String plugin, String revision, String reason) {
        return new LoadException(Kind.ABI, plugin, revision, null, who(plugin, revision) + ": ABI violation: " + reason, null);
    }

    static LoadException instantiate(String plugin, String revision, Failure failure) {
        return new LoadException(Kind.INSTANTIATE, plugin, revision, failure,
                who(plugin, revision) + ": instantiation failed: " + failure, null);
    }

    static LoadException guest(Kind kind, String plugin, String revision, Failure failure) {
        String phase;
        switch (kind) {
            case CONFIGURE:
                phase = "configure";
                break;
            case SELF_CHECK:
                phase = "self-check";
                break;
            case SAVE_STATE:
                phase = "save-state";
                break;
            default:
                phase = "restore-state";
                break;
        }
        return new LoadException(kind, plugin, revision, failure, who(plugin, revision) + ": " + phase + " failed: " + failure, null);
    }

    static LoadException tooManyPlugins(String plugin, String revision, int max) {
        return new LoadException(Kind.TOO_MANY_PLUGINS, plugin, revision, null,
                "plugin " + plugin + ": cannot load more than " + max + " plugins", null);
    }

    /** Why. */
    public Kind kind() {
        return kind;
    }

    /** The plugin slot. */
    public String plugin() {
        return plugin;
    }

    /** The refused revision. */
    public String revision() {
        return revision;
    }

    @Override
    public String kindLabel() {
        return kind.label();
    }

    @Override
    public Failure failure() {
        return failure;
    }
}
