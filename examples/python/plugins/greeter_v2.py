"""Example Python plugin, version 2: takes the count over from version 1."""

count = 0
greeting = "hello"


def configure(config):
    global greeting
    if isinstance(config, dict):
        greeting = config.get("greeting", greeting)


def handle(request):
    global count
    count += 1
    return f"v2:{greeting} {request}:{count}"


def self_check():
    return True


def save_state():
    return {"count": count}


def restore_state(state):
    global count
    count = int(state["count"])
