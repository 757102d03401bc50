"""Example Python plugin, version 1: counts requests and keeps the count across swaps."""

count = 0


def handle(request):
    global count
    count += 1
    return f"v1:{request}:{count}"


def self_check():
    return handle.__name__ == "handle"


def save_state():
    return {"count": count}
