"""pipeline-cluster's `test_tasks.tasks`, with the import renamed: each task logs its item
through `multiprocess_logging` and returns it (twice for the generator)."""

import pcluster.multiprocess_logging as mpl


def wait(item):
    mpl.log(item)
    return (item, item)


def wait_more(item):
    mpl.log(item)
    return item + " (waited more)"
