"""pipeline-cluster's README tasks, with only the import name changed (for Python tasks)."""

import pcluster


def simple_task(item):
    pcluster.log(item)
    return item


def generator_task(item):
    pcluster.log(item)
    return (item, item)


class DropItem:
    def __init__(self, drop_message):
        self.drop_message = drop_message

    def __call__(self, item):
        pcluster.log(self.drop_message)
        return None


def w1_python(item):
    """W1 in one Python task: every even ``item-i`` twice, odd ones dropped."""
    if int(item.rsplit("-", 1)[1]) % 2:
        return None
    return (item, item)
