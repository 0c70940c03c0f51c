"""pipeline-cluster's test package layout: the tasks live in a submodule (`tasks`) that the
package's `__init__` does not import."""
