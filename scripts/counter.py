# A small target for the demo: prints a word and a count twice a second.
# SIGUSR1 changes the word from apple to banana.
import signal
import time

state = {"word": "apple", "n": 0}


def change(signum, frame):
    state["word"] = "banana"


signal.signal(signal.SIGUSR1, change)
while True:
    state["n"] += 1
    print("word=%s n=%d" % (state["word"], state["n"]), flush=True)
    time.sleep(0.5)
