package dev.hotload;

/** A request the plugin could not serve, in hotload-host's words. */
public final class CallException extends HotloadException {
    private static final long serialVersionUID = 1L;

    /** Why a call failed. */
    public enum Kind {
        /** No revision of the plugin is loaded. */
        NOT_LOADED("not_loaded"),
        /** Every instance stayed busy for the checkout timeout. */
        BUSY("busy"),
        /** The guest failed on this request; its instance is replaced. */
        HANDLE("handle"),
        /** A replacement instance could not be created. */
        REINSTANTIATE("reinstantiate");

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
    private final transient Failure failure;

    private CallException(Kind kind, Failure failure, String message) {
        super(message, null);
        this.kind = kind;
        this.failure = failure;
    }

    static CallException notLoaded(String plugin) {
        return new CallException(Kind.NOT_LOADED, null, "plugin " + plugin + ": not loaded");
    }

    static CallException busy(String plugin, String revision, long waitedMs) {
        return new CallException(Kind.BUSY, null,
                "plugin " + plugin + " revision " + revision + ": no free instance within " + waitedMs + " ms");
    }

    static CallException handle(String plugin, String revision, Failure failure) {
        return new CallException(Kind.HANDLE, failure, "plugin " + plugin + " revision " + revision + ": handle failed: " + failure);
    }

    static CallException reinstantiate(String plugin, String revision, Failure failure) {
        return new CallException(Kind.REINSTANTIATE, failure,
                "plugin " + plugin + " revision " + revision + ": re-instantiation failed: " + failure);
    }

    /** Why. */
    public Kind kind() {
        return kind;
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
