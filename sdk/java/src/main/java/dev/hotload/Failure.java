package dev.hotload;

/**
 * How a guest export (handle, self_check, …) did not complete, worded as hotload-host words it
 * ({@code returned status 7}, {@code deadline exceeded (interrupted)}, …).
 */
public final class Failure {
    /** The ways a guest export can fail; {@link #label()} is the conformance vocabulary. */
    public enum Kind {
        /** It returned a non-zero status. */
        STATUS("status"),
        /** It ran past the call deadline and was interrupted. */
        TIMEOUT("timeout"),
        /** The calling thread was interrupted while it ran. */
        CANCELED("canceled"),
        /** It asked for more memory than the host allows. */
        MEMORY_LIMIT("memory_limit"),
        /** It trapped (unreachable, out-of-bounds access, …). */
        TRAP("trap"),
        /** It returned (or handed out) a (ptr, len) outside its memory. */
        BAD_RANGE("bad_range"),
        /** Anything else the runtime reported. */
        OTHER("other");

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
    private final int status;
    private final long requested;
    private final long limit;
    private final long ptr;
    private final long len;
    private final String detail;

    private Failure(Kind kind, int status, long requested, long limit, long ptr, long len, String detail) {
        this.kind = kind;
        this.status = status;
        this.requested = requested;
        this.limit = limit;
        this.ptr = ptr;
        this.len = len;
        this.detail = detail;
    }

    /** A non-zero status. */
    public static Failure status(int status) {
        return new Failure(Kind.STATUS, status, 0, 0, 0, 0, "");
    }

    /** The call deadline passed. */
    public static Failure timeout() {
        return new Failure(Kind.TIMEOUT, 0, 0, 0, 0, 0, "");
    }

    /** The caller was interrupted. */
    public static Failure canceled() {
        return new Failure(Kind.CANCELED, 0, 0, 0, 0, 0, "");
    }

    /** A memory growth past the limit. */
    public static Failure memoryLimit(long requested, long limit) {
        return new Failure(Kind.MEMORY_LIMIT, 0, requested, limit, 0, 0, "");
    }

    /** A trap, with the runtime's words. */
    public static Failure trap(String detail) {
        return new Failure(Kind.TRAP, 0, 0, 0, 0, 0, detail);
    }

    /** A (ptr, len) outside the guest's memory; both are unsigned 32-bit values. */
    public static Failure badRange(long ptr, long len) {
        return new Failure(Kind.BAD_RANGE, 0, 0, 0, ptr, len, "");
    }

    /** Anything else. */
    public static Failure other(String detail) {
        return new Failure(Kind.OTHER, 0, 0, 0, 0, 0, detail);
    }

    /** How it failed. */
    public Kind kind() {
        return kind;
    }

    /** The status returned ({@link Kind#STATUS}). */
    public int statusCode() {
        return status;
    }

    @Override
    public String toString() {
        switch (kind) {
            case STATUS:
                return "returned status " + status;
            case TIMEOUT:
                return "deadline exceeded (interrupted)";
            case CANCELED:
                return "canceled by the caller (interrupted)";
            case MEMORY_LIMIT:
                return "memory limit exceeded: asked for " + requested + " bytes, limit is " + limit + " bytes";
            case TRAP:
                return "trap: " + detail;
            case BAD_RANGE:
                return "returned range ptr=" + ptr + " len=" + len + " outside its memory";
            default:
                return detail;
        }
    }
}
