package dev.hotload;

/** A load or a call that did not happen; the message is hotload-host's wording. */
public abstract class HotloadException extends Exception {
    private static final long serialVersionUID = 1L;

    /** Makes one with its message and cause. */
    protected HotloadException(String message, Throwable cause) {
        super(message, cause);
    }

    /** The conformance vocabulary of the reason ({@code self_check}, {@code not_loaded}, …). */
    public abstract String kindLabel();

    /** How the guest failed, or null when no guest code was involved. */
    public abstract Failure failure();
}
