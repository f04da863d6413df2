// SPDX-License-Identifier: GPL-2.0

#include <linux/pm_runtime.h>

__rust_helper int rust_helper_pm_runtime_resume_and_get(struct device *dev)
{
	return pm_runtime_resume_and_get(dev);
}

__rust_helper int rust_helper_pm_runtime_resume(struct device *dev)
{
	return pm_runtime_resume(dev);
}

__rust_helper void rust_helper_pm_runtime_put(struct device *dev)
{
	pm_runtime_put(dev);
}

__rust_helper void rust_helper_pm_runtime_get_noresume(struct device *dev)
{
	pm_runtime_get_noresume(dev);
}

__rust_helper void rust_helper_pm_runtime_put_noidle(struct device *dev)
{
	pm_runtime_put_noidle(dev);
}
